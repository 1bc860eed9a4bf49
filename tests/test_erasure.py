"""Right to erasure, end to end in embedded mode: a patient's series arrive over DICOM, get fingerprints, brains,
verifications, verdicts, worker jobs and spool folders; `deepbrainprint erase` removes all of it, down to the bytes of
the database file, while the other patient stays whole."""

from __future__ import annotations

import json
import time

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from deepbrainprint.cli.app import app
from deepbrainprint.settings import load_settings
from deepbrainprint.wiring import storage_node
from dicom_node.scu import send_instances
from dicom_node.spool import Spool
from fingerprint.identity.archive import Archive
from worker.embedded import EmbeddedWorker
from worker.ledger import DONE, Ledger


def wait_for(condition, timeout_s: float = 240.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not condition():
        time.sleep(0.2)
    return bool(condition())


def test_erase_removes_every_trace_of_one_patient_and_keeps_the_other(tmp_path, write_head_series, monkeypatch) -> None:
    for name in ("DBP_CONFIG", "DBP_BROKER_URL", "DBP_STORE_URL", "DBP_ORTHANC_URL", "DBP_INDEX_DIR", "DBP_HOME"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(home=tmp_path / "home", port=0, quiet_time_s=0.3, broker_url="", orthanc_url="",
                             spool_keep_done_s=0)  # keep spooled series: erasure must remove them itself
    sent = [("colin", "ERASE-ME-7", "axial"), ("colin", "ERASE-ME-7", "sagittal"), ("mni", "KEEP-ME-8", "axial")]
    uids = []
    worker = EmbeddedWorker(settings.worker_config()).start()
    node = storage_node(settings).start()
    try:
        for number, (head, patient, orientation) in enumerate(sent):
            files = write_head_series(tmp_path / f"s{number}", head, patient, orientation=orientation)
            uids.append(str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID))
            assert send_instances(files, node.port, called_ae=settings.ae_title).all_ok
            assert wait_for(lambda n=number: worker.ctx.ledger.counts()[DONE] == n + 1)
    finally:
        node.stop()
        worker.stop()
    store_file = settings.resolved_index_dir / "store.sqlite"
    with Archive(settings.archive_config(), model=object()) as archive:
        erased_hash = archive.hash_patient_id("ERASE-ME-7")
        with archive.store.reading() as conn:
            vectors = {r[0]: r[2] for r in archive.store.calibration_rows(conn, _model_version(settings))}
            assert archive.store.verification_scores(conn, {(uids[1], uids[0])}, "dbp-verify-v1")  # they were compared

    def database_bytes() -> bytes:  # the store file and its write-ahead log (WAL mode)
        return b"".join(p.read_bytes() for p in store_file.parent.glob(store_file.name + "*"))

    assert erased_hash.encode() in database_bytes()

    result = CliRunner().invoke(app, ["erase", "--index", str(settings.resolved_index_dir), "--yes"],
                                input="ERASE-ME-7\n", env={"DBP_HOME": str(settings.home)})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["series"] == 2 and report["worker_jobs"] == 2 and report["spooled_series"] == 2
    assert report["verifications"] >= 1 and report["brains"] == 2

    raw = database_bytes()
    for trace in (erased_hash, uids[0], uids[1]):
        assert trace.encode() not in raw  # not even in the database file's free pages
    assert uids[2].encode() in raw  # the other patient stays
    ledger = Ledger(settings.worker_config().ledger_url)
    try:
        assert [job.verdict["series_instance_uid"] for job in ledger.all_jobs()] == [uids[2]]
    finally:
        ledger.close()
    assert len(Spool(settings.resolved_spool_dir).series_keys()) == 1
    with Archive(settings.archive_config(), model=object()) as archive:
        index = archive.index_for(_model_version(settings))
        hits = index.search(np.asarray(vectors[uids[0]], dtype=np.float32), 5)
        assert len(hits) == 1  # the rebuilt index holds the other patient's vector only
    again = CliRunner().invoke(app, ["erase", "--index", str(settings.resolved_index_dir), "--yes"],
                               input="ERASE-ME-7\n", env={"DBP_HOME": str(settings.home)})
    assert again.exit_code == 1  # nothing of that patient left


def _model_version(settings) -> str:  # type: ignore[no-untyped-def]
    from fingerprint.model.fingerprinter import load_model

    return load_model(settings.model_path).model_version


pytestmark = pytest.mark.slow
