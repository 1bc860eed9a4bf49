"""Where the library's own files live: the reference head (assets), the shipped weights, and the real data.

One place, so that moving a module never silently breaks a path computed from its ``__file__``.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
SHIPPED_WEIGHTS_DIR = PACKAGE_DIR / "weights"


def shared_data_dir() -> Path:
    """``$DBP_SHARED_DATA``, else ``shared/data`` beside the repository (the real scans of the project)."""
    return Path(os.environ.get("DBP_SHARED_DATA", PACKAGE_DIR.parents[1] / "shared" / "data"))
