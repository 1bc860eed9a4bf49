"""Planted alarms end to end in service mode: another person's head filed under an enrolled PatientID, sent over
real DICOM associations (SCP -> Redis -> Celery worker -> store), must come out as ``identity_mismatch``; a verdict
that is always ``new_patient`` fails here, which the ``new_patient``-only tests would not notice. The patients carry
a planted name and ID, and neither may show in the worker's or the SCP's log.

Where the other planted cases are: embedded mode (SCP -> ledger worker -> store), both the duplicate and the
mismatch, in ``test_worker_demo.py`` (the demo is that path: its planted series are asserted by their own verdicts
in the archive's ledger); service mode's duplicate in ``test_modes_service.py`` (two series while Redis is down).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from deepbrainprint import supervisor as service
from dicom_node.scu import send_instances
from worker.ledger import DONE, Ledger

from test_modes_service import clean_env, service_settings, wait_workers_ready  # noqa: F401 - clean_env: a fixture
from test_worker_embedded import wait_for

#: Planted so that a leak is unmistakable: the name and IDs appear nowhere but in the DICOM headers sent.
PLANTED_NAME = "PLANTEDNAME^JOHANNA"
ENROLLED = "PLANTED-ID-4711"


#: Two real, different people from ``../shared/data/people`` (the demo's pair): MNI152, an average of many brains,
#: is too close to Colin27 for a clear mismatch (it lands in needs_review).
PEOPLE = ("people/ixi-2mm/IXI012-HH-1211-T1_ds.nii.gz", "people/older-adults-2mm/Subj1_T1.nii.gz")


@pytest.fixture(scope="module")
def people(shared_data: Path) -> tuple:  # type: ignore[type-arg]
    import SimpleITK as sitk

    paths = [shared_data / p for p in PEOPLE]
    if not all(p.exists() for p in paths):
        pytest.skip(f"real heads {PEOPLE} not found under {shared_data}")
    return tuple(sitk.ReadImage(str(p), sitk.sitkFloat32) for p in paths)


def write_named(head, out_dir: Path, patient_id: str, **options) -> list[Path]:  # type: ignore[no-untyped-def]
    """A real head as an MR series filed under ``patient_id`` with the planted patient name."""
    from fingerprint.imaging.dicom_write import write_series

    return write_series(head, out_dir, patient_id=patient_id, patient_name=PLANTED_NAME, **options)


def series_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def verdict_of(ledger: Ledger, uid: str) -> str | None:
    for job in ledger.all_jobs():
        if job.state == DONE and job.verdict and job.verdict.get("series_instance_uid") == uid:
            return job.verdict["verdict"]
    return None


@pytest.mark.slow
def test_service_mode_finds_the_planted_mismatch(  # type: ignore[no-untyped-def]
    tmp_path, redis_url, people, clean_env  # noqa: F811 - the imported fixture
) -> None:
    """Service mode's duplicate is planted in ``test_modes_service`` (Redis down, then back); the mismatch here."""
    person, other = people
    settings = service_settings(tmp_path / "home", redis_url)
    service.up(settings, workers=1, pool="solo")
    layout = service.ServiceLayout.for_settings(settings)
    ledger = Ledger(settings.store_url)
    try:
        wait_workers_ready(settings, ["worker-1"])
        enrolled = write_named(person, tmp_path / "enrolled", ENROLLED)
        mismatch = write_named(other, tmp_path / "mismatch", ENROLLED, orientation="coronal", study_date="20240601")
        for count, files in enumerate((enrolled, mismatch), start=1):
            assert send_instances(files, settings.port, called_ae=settings.ae_title).all_ok
            assert wait_for(lambda n=count: ledger.counts()[DONE] == n, 240), (
                ledger.counts(), layout.log_file("worker-1").read_text(errors="replace")[-3000:])
        assert verdict_of(ledger, series_uid(enrolled)) == "new_patient"
        assert verdict_of(ledger, series_uid(mismatch)) == "identity_mismatch"
    finally:
        service.down(settings)
        ledger.close()
    for name in ("worker-1", "scp"):
        text = layout.log_file(name).read_text(errors="replace")
        assert "succeeded" in text or name == "scp"  # the log is the worker's real output, not an empty file
        for planted in ("PLANTEDNAME", ENROLLED):
            assert planted not in text, name
