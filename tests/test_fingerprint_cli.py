"""``deepbrainprint fingerprint``: real series in, one JSON line each; a bad series is reported and never stops the
others; the exit code says whether any was rejected."""

from __future__ import annotations

import json
import os
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
        [*CLI, "fingerprint", *args, "--json"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [line["series_dir"] for line in lines] == args, proc.stderr[-2000:]
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


@pytest.mark.slow
def test_fingerprint_cli_exit_code_zero_when_all_succeed(shared_data: Path) -> None:
    good = shared_data / "t1" / "siemens-prisma-xa30-enhanced-2mm"
    proc = subprocess.run([*CLI, "fingerprint", str(good)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"{good}\tOK\t")
