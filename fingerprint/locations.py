"""Where the library's own files live: the reference head (assets), the shipped weights, and the real data.

One place, so that moving a module never silently breaks a path computed from its ``__file__``.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
SHIPPED_WEIGHTS_DIR = PACKAGE_DIR / "weights"
#: Colin27 (Debian package mricron-data): a held-out real head, the fixed image of the base heads' careful alignment,
#: the demo's first person. Read it with :func:`fingerprint.imaging.reference.load_colin27`.
COLIN27_PATH = Path("/usr/share/mricron/templates/ch2.nii.gz")


def weights_folder(path: Path) -> Path:
    """The folder of a weights path (a folder, or the ``.safetensors`` file in it): where the model's metadata,
    thresholds, search transform and int8 graph sit beside the weights."""
    return path if path.is_dir() else path.parent


def shared_data_dir() -> Path:
    """``$DBP_SHARED_DATA``, else ``shared/data`` beside the repository (the real scans of the project)."""
    return Path(os.environ.get("DBP_SHARED_DATA", PACKAGE_DIR.parents[1] / "shared" / "data"))
