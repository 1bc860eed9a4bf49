"""Commands that need no model, index or image library must not import them: ``--help`` and the light commands
start in a fraction of the time torch alone takes to import. Each check runs the real CLI in a fresh interpreter
and reads its ``sys.modules``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "faiss", "SimpleITK", "scipy", "pydicom", "pynetdicom", "celery")

PROBE = """
import sys
before = set(sys.modules)
if sys.argv[1] == "--control-import-torch":
    import torch  # noqa: F401  the control: the probe must see a heavy import when there is one
else:
    sys.argv = ["deepbrainprint", *sys.argv[1:]]
    from deepbrainprint.cli.app import main
    try:
        main()
    except SystemExit:
        pass
print("HEAVY=" + ",".join(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY_NAMES)), file=sys.stderr)
"""


def heavy_modules_after(argv: list[str], home: Path) -> set[str]:
    env = {**os.environ, "DBP_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    script = f"HEAVY_NAMES = {HEAVY!r}\n{PROBE}"
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.startswith("HEAVY=")]
    assert lines, f"the probe did not finish: {done.stderr[-2000:]}"
    return {name.split(".")[0] for name in lines[-1][len("HEAVY="):].split(",") if name}


def test_the_probe_sees_a_heavy_import(tmp_path: Path) -> None:
    assert "torch" in heavy_modules_after(["--control-import-torch"], tmp_path)


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["report", "--help"], ["dashboard", "--help"], ["serve", "--help"], ["enroll", "--help"],
     ["version"], ["down"], ["report", "audit"]],
    ids=lambda argv: " ".join(argv),
)
def test_light_commands_import_no_heavy_library(argv: list[str], tmp_path: Path) -> None:
    assert heavy_modules_after(argv, tmp_path) == set()
