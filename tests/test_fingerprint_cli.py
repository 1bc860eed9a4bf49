"""``deepbrainprint fingerprint``: real series in, one JSON line each; a bad series is reported and never stops the
others; the exit code says whether any was rejected."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fingerprint.model.fingerprinter import load_model

CLI = [sys.executable, "-m", "deepbrainprint.cli.app"]


@pytest.mark.slow
def test_fingerprint_cli_on_real_and_bad_series(shared_data: Path, tmp_path: Path) -> None:
    good = shared_data / "t1" / "siemens-prisma-xa30-enhanced-2mm"
    empty = tmp_path / "empty-series"
    empty.mkdir()
    (empty / "notes.txt").write_text("not DICOM")
    localiser_like = shared_data / "hard" / "12bit"  # single 2D images: not a 3D T1 volume
    args = [str(empty), str(good), str(localiser_like)]
    proc = subprocess.run(
        [*CLI, "fingerprint", *args, "--json", "--show-paths"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [line["series_dir"] for line in lines] == args, proc.stderr[-2000:]  # asked for with --show-paths
    assert [line["label"].split()[0] for line in lines] == ["1/3", "2/3", "3/3"]
    assert lines[0]["label"] == "1/3"  # nothing readable in it: its place only
    assert proc.returncode == 1  # some series were rejected

    first, second, third = lines
    assert first["rejected"] == "no_dicom" and first["detail"]
    assert "rejected" in third and "fingerprint" not in third

    vector = np.asarray(second["fingerprint"], dtype=np.float64)
    assert vector.shape == (512,)
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
    assert second["model_version"] == load_model().model_version
    assert second["geometry"] and second["method"] == "anatomical"
    assert "patient_id" not in second["series"]
    assert re.fullmatch(r"2/3 series:[0-9a-f]{12}", second["label"]), second["label"]


@pytest.mark.slow
def test_fingerprint_cli_exit_code_zero_when_all_succeed(shared_data: Path) -> None:
    good = shared_data / "t1" / "siemens-prisma-xa30-enhanced-2mm"
    proc = subprocess.run([*CLI, "fingerprint", str(good)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.match(r"1/1 series:[0-9a-f]{12}\tOK\t", proc.stdout), proc.stdout  # named by its label
    assert str(good) not in proc.stdout + proc.stderr  # never by its folder unless --show-paths asks
