"""Shared fixtures: where the real data lives, and whether the real services answer.

Tests use real components. Where one is missing here (no ``../shared/data``, Redis or PostgreSQL down) the test is
skipped with a message that says exactly what is missing, never silently passed.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DBP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (the real DICOM series), or a skip that says it is absent."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real DICOM data not found at {SHARED_DATA} (set DBP_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not _port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    if not _port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    return os.environ.get("DBP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# --- identity archive (helper "archive") ------------------------------------------------------------------------------
@pytest.fixture
def postgres_schema_url(postgres_url: str):
    """A store URL on the real PostgreSQL server, in a fresh schema of its own (dropped afterwards).

    Archives select their schema through ``options=-csearch_path=...``, so tests never see each other's rows.
    """
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"dbp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def synthetic_fingerprint():
    """Make a FingerprintResult from a chosen vector and identifiers: controlled similarities for verdict tests."""
    import numpy as np

    from fingerprint.types import FingerprintResult, SeriesIdentifiers, SliceResult

    def make(vector, patient_id: str, series_uid: str, study_uid: str = "", model_version: str = "test-model"):
        vector = np.asarray(vector, dtype=np.float32)
        vector = vector / np.linalg.norm(vector)
        ids = SeriesIdentifiers(
            patient_id=patient_id,
            study_instance_uid=study_uid or f"{series_uid}.study",
            series_instance_uid=series_uid,
            sop_instance_uids=(f"{series_uid}.1", f"{series_uid}.2"),
            study_date="20240102",
            modality="MR",
        )
        pixels = np.full((128, 128), 0.5, dtype=np.float32)
        return FingerprintResult(vector=vector, model_version=model_version, slice=SliceResult(pixels, ids))

    return make


# --- worker / modes tests (helper "worker") ---------------------------------------------------------------------------
from fingerprint.locations import COLIN27_PATH  # noqa: E402 - after the helpers above, used by the fixtures below


@pytest.fixture(scope="session")
def small_heads() -> dict:
    """Real heads at 2 mm (fast to send and fingerprint): Colin27 always, MNI152 when nilearn has it.
    Skips when Colin27 (the mricron-data package) is missing."""
    if not COLIN27_PATH.exists():
        pytest.skip(f"Colin27 not found at {COLIN27_PATH} (install mricron-data)")
    import SimpleITK as sitk

    def at_2mm(image: "sitk.Image") -> "sitk.Image":
        size = [int(round(n * s / 2.0)) for n, s in zip(image.GetSize(), image.GetSpacing())]
        return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (2.0, 2.0, 2.0),
                             image.GetDirection(), 0.0, sitk.sitkFloat32)

    from fingerprint.imaging.reference import load_colin27, load_mni152

    heads = {"colin": at_2mm(load_colin27())}
    try:
        heads["mni"] = load_mni152(resolution=2, pixel_type=sitk.sitkFloat32)
    except ImportError:
        pass
    return heads


@pytest.fixture(scope="session")
def write_head_series(small_heads: dict):
    """``write(out_dir, head, patient_id, orientation="axial", study_date="20240101") -> list[Path]``: a real head
    as an MR DICOM series (through ``fingerprint.imaging.dicom_write.write_series``)."""
    from fingerprint.imaging.dicom_write import write_series

    def write(out_dir: Path, head: str, patient_id: str, orientation: str = "axial", study_date: str = "20240101"):
        return write_series(small_heads[head], out_dir, patient_id=patient_id, orientation=orientation,
                            study_date=study_date)

    return write


# --- slice pipeline tests (helper "slice") ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def colin27():
    """The Colin27 head (mricron-data) at its native 1 mm as float32 SimpleITK, or a skip saying it is absent."""
    if not COLIN27_PATH.exists():
        pytest.skip(f"Colin27 not found at {COLIN27_PATH} (install the Debian package mricron-data)")
    import SimpleITK as sitk

    from fingerprint.imaging.reference import load_colin27

    return load_colin27(sitk.sitkFloat32)


@pytest.fixture(scope="session")
def real_slice():
    """``real_slice(folder)``: the anatomical :class:`~fingerprint.types.SliceResult` (slice and canonical brain) of a
    real series, computed once per test run and shared by every test that asks (aligning a real series takes
    seconds; several model-quality and alignment checks look at the same nine series)."""
    from fingerprint.imaging.pipeline import slice_series

    cache: dict[Path, object] = {}

    def slice_of(folder: Path):
        folder = Path(folder).resolve()
        if folder not in cache:
            cache[folder] = slice_series(folder)
        return cache[folder]

    return slice_of


# --- the quick tier (`make check`) -------------------------------------------------------------------------------------
#: Modules whose tests are all unit tests (seconds each), and the one end-to-end series of the quick tier: a real head
#: sent over a DICOM association to the SCP, fingerprinted by the embedded worker, its verdict in the store.
QUICK_MODULES = {
    "test_architecture", "test_augment", "test_files", "test_dicom_series", "test_dicom_writer", "test_evaluation",
    "test_fuzz_inputs", "test_header_scan", "test_index", "test_losses", "test_mi_registration", "test_model",
    "test_modes_deploy", "test_part10", "test_site_calibration", "test_spool", "test_store", "test_verdicts",
    "test_worker_cli", "test_worker_ledger",
}
QUICK_TESTS = {"test_worker_embedded.py::test_series_sent_to_the_scp_ends_as_a_verdict_in_the_store"}


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001 - pytest hook
    """Mark the quick tier (``-m quick``): the modules and test above, less anything marked ``slow``."""
    for item in items:
        module = item.path.stem
        in_tier = module in QUICK_MODULES or f"{item.path.name}::{item.originalname}" in QUICK_TESTS
        if in_tier and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.quick)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """``deepbrainprint demo --quick`` run once per test run (real people over real DICOM associations, its archive
    kept): what it printed, its JSON results, its exit status and its home. The demo test and the dashboard test
    both look at it."""
    if not COLIN27_PATH.exists():
        pytest.skip("Colin27 (mricron-data) is not installed")
    import torch

    from deepbrainprint.demo import run_demo

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("demo") / "home"
    lines: list[str] = []
    results: list[dict] = []
    try:
        status = run_demo(home=home, quick=True, echo=lines.append, on_result=results.append)
    finally:
        torch.set_num_threads(previous)
    return {"status": status, "text": "\n".join(lines), "results": results, "home": home}
