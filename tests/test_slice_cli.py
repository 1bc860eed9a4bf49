"""``deepbrainprint slice``: PNG + one JSON object, typed rejections with exit code 3, no PatientID in the output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from deepbrainprint.cli.slice_cmd import EXIT_REJECTED

CLI = [sys.executable, "-m", "deepbrainprint.cli.app", "slice"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_slice_writes_png_and_one_json_object(shared_data: Path, tmp_path: Path) -> None:
    series = shared_data / "t1" / "siemens-prisma-xa30-enhanced-2mm"
    out = tmp_path / "slice.png"
    done = run(str(series), "--png", str(out), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    patient_id = str(pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True).PatientID)
    assert patient_id and patient_id not in done.stdout
    assert report["series"]["instance_count"] == 1 and report["series"]["modality"] == "MR"
    assert report["method"] == "anatomical"
    assert report["geometry"]["input"]["size"] == [128, 128, 96]
    assert report["geometry"]["input"]["enhanced"] is True
    assert report["geometry"]["level"]["reference_z_mm"] == 18.0
    assert report["slice"] == {"size": [128, 128], "spacing_mm": [1.5, 1.5], "png": str(out)}
    png = np.array(Image.open(out))
    assert png.shape == (128, 128) and png.dtype == np.uint8 and png.max() > 200 and (png == 0).mean() > 0.2


def test_middle_method_and_human_summary(shared_data: Path, tmp_path: Path) -> None:
    done = run(str(shared_data / "repeats" / "decubitus-HFS-t1-2d"), "--method", "middle", "--png", str(tmp_path / "m.png"))
    assert done.returncode == 0, done.stderr
    assert "middle slice of the array" in done.stdout and "sagittal" in done.stdout
    assert (tmp_path / "m.png").exists()


def test_rejection_prints_code_and_exits_3(shared_data: Path) -> None:
    done = run(str(shared_data / "hard" / "transfer-syntaxes" / "7.dcm"), "--json")
    assert done.returncode == EXIT_REJECTED == 3
    assert json.loads(done.stdout) == {"rejected": "not_t1_brain", "detail": json.loads(done.stdout)["detail"]}
    assert "Traceback" not in done.stderr


def test_bad_method_is_a_usage_error(shared_data: Path) -> None:
    done = run(str(shared_data / "t1" / "siemens-prisma-xa30-enhanced-2mm"), "--method", "random")
    assert done.returncode == 2


def test_help_documents_exit_codes() -> None:
    done = run("--help")
    assert done.returncode == 0 and "Exit codes" in done.stdout and "rejected" in done.stdout
