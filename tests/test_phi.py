"""No patient data beyond the DICOM files themselves: not in worker logs or tracebacks (embedded and Celery), not in
the ledger's ``last_error``, not in the Celery messages as they sit in Redis, not in CLI output.

Each test plants a distinctive PatientID and name (and, where the path can carry one, a folder named after a patient)
and makes the path it checks really run: a store that refuses writes so errors and tracebacks are produced, a queue
with no consumer so the message can be read before anyone takes it, a second patient's query that lists the first
one as a neighbour. The SCP's own logs are checked in ``test_scp.py``.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from deepbrainprint import supervisor as service
from deepbrainprint.cli.app import app
from deepbrainprint.cli.index_cmds import EXIT_ALARM, EXIT_OK, EXIT_REJECTED
from deepbrainprint.settings import load_settings
from dicom_node.types import CompletedSeries
from fingerprint.imaging.dicom_write import noise_series, write_series
from worker.dispatch import submit_completed_series
from worker.embedded import EmbeddedWorker
from worker.ledger import FAILED, Ledger

from test_modes_service import clean_env  # noqa: F401 - a fixture: no DBP_* setting of the machine leaks in
from test_worker_embedded import refuse_store_writes, wait_for

PATIENT_ID, PATIENT_NAME = "PHI-ID-90210", "PHINAME^ROSALIND"
#: What must never show: the ID, the name (whole and in parts), the birth date the synthetic series carry.
PLANTED = (PATIENT_ID, "PHINAME", "ROSALIND", "19700101")

def assert_no_phi(text_seen: str, where: str, *extra: str) -> None:
    for secret in (*PLANTED, *extra):
        assert secret not in text_seen, f"{secret!r} leaked into {where}"


def planted_series(folder: Path, seed: int) -> tuple[list[Path], str]:
    """Six noise slices (a rejection: no fingerprint to wait for) carrying the planted name, ID and birth date."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(noise_series(6, seed=seed, patient_id=PATIENT_ID)):
        ds.PatientName = PATIENT_NAME
        paths.append(folder / f"{index:04d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths, str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def completed(folder: Path, key: str) -> CompletedSeries:
    now = datetime.now(timezone.utc)
    return CompletedSeries(series_key=key, path=folder, instance_count=len(list(folder.glob("*.dcm"))),
                           calling_ae_title="TEST", first_received=now, last_received=now)


@pytest.fixture
def refusing_store(postgres_schema_url: str) -> str:
    """A store on the real PostgreSQL that refuses every write of a series, so the worker's retry, give-up and
    traceback paths all run."""
    refuse_store_writes(postgres_schema_url)
    return postgres_schema_url


def test_embedded_worker_logs_and_last_error_carry_no_patient_data(  # type: ignore[no-untyped-def]
    tmp_path, refusing_store, clean_env, caplog
) -> None:
    """A site that keeps clear PatientIDs (``keep_clear_patient_id``) puts the ID in the store's INSERT: a failed
    write must still not carry it (nor the series' UIDs) into the ledger or the logs."""
    settings = load_settings(home=tmp_path / "home", store_url=refusing_store, broker_url="", orthanc_url="",
                             keep_clear_patient_id=True, task_max_attempts=2, retry_backoff_max_s=0.2)
    folder = tmp_path / "series"
    _, series_uid = planted_series(folder, seed=80)
    caplog.set_level(logging.DEBUG)
    with EmbeddedWorker(settings.worker_config(), poll_interval_s=0.1) as worker:
        key = submit_completed_series(settings.worker_config(), completed(folder, "phi-embedded"))
        deadline_ok = wait_for(lambda: worker.ctx.ledger.get(key).state == FAILED, 60)
        job = worker.ctx.ledger.get(key)
    assert deadline_ok, job
    assert job.attempts == 2 and job.last_error == "OperationalError (psycopg CannotConnectNow, SQLSTATE 57P03)"
    assert "attempt 2 failed" in caplog.text  # the worker did log its failures
    assert_no_phi(job.last_error, "the ledger's last_error", series_uid)
    assert_no_phi(json.dumps([job.completed, job.source_info]), "the ledger row", series_uid)
    assert_no_phi(caplog.text, "the worker's log", series_uid)


@pytest.mark.slow
def test_celery_message_in_redis_and_worker_log_carry_no_patient_data(  # type: ignore[no-untyped-def]
    tmp_path, redis_url, refusing_store, clean_env
) -> None:
    """The message is read raw from Redis before any worker takes it (a private queue, so nothing else consumes
    it); then a real worker process takes it, fails on the refusing store, retries, gives up with a traceback in
    its log: neither the message nor the log may carry the patient."""
    import redis

    base = redis_url.rsplit("/", 1)[0]
    prefix = f"dbp-phi-{uuid.uuid4().hex[:8]}"
    settings = load_settings(home=tmp_path / "home", store_url=refusing_store, broker_url=f"{base}/13",
                             queue_prefix=prefix, orthanc_url="", keep_clear_patient_id=True, task_max_attempts=2,
                             retry_backoff_max_s=0.5)
    client = redis.Redis.from_url(settings.broker_url)
    folder = tmp_path / "series"
    _, series_uid = planted_series(folder, seed=81)
    layout = service.ServiceLayout.for_settings(settings)
    ledger = Ledger(settings.store_url)
    try:
        key = submit_completed_series(settings.worker_config(), completed(folder, "phi-celery"))
        raw = client.lrange(f"{prefix}.fingerprint", 0, -1)
        assert len(raw) == 1, raw
        message = json.loads(raw[0])
        body = base64.b64decode(message["body"]).decode()
        assert key in body  # the message is the one sent: it carries the job key, and only that
        assert_no_phi(raw[0].decode() + body, "the Celery message in Redis", series_uid)
        argv = [*service.CLI, "worker", "--concurrency", "1", "--pool", "solo", "--name", f"{prefix}@%h"]
        service.spawn(layout, "worker-1", argv, service.child_environment(settings))
        assert wait_for(lambda: ledger.get(key).state == FAILED, 120), (
            ledger.get(key), layout.log_file("worker-1").read_text(errors="replace")[-3000:])
    finally:
        service.down(settings)
        ledger.close()
        client.delete(f"{prefix}.fingerprint", f"{prefix}.writeback")
        client.close()
    log_text = layout.log_file("worker-1").read_text(errors="replace")
    assert "given up after 2 attempts: OperationalError" in log_text  # the failure and its traceback were logged
    assert_no_phi(log_text, "the Celery worker's log", series_uid)
    assert_no_phi(ledger_last_error(settings.store_url, key), "the ledger's last_error", series_uid)


def ledger_last_error(url: str, key: str) -> str:
    ledger = Ledger(url)
    try:
        return ledger.get(key).last_error
    finally:
        ledger.close()


def test_cli_output_names_no_patient_from_headers_or_other_folders(  # type: ignore[no-untyped-def]
    tmp_path, small_heads, clean_env, caplog, monkeypatch
) -> None:
    """Folders named after patients, headers with a planted name: ``slice`` prints neither (a rejection, whose
    detail is where paths tend to show); ``enroll`` and ``query`` name each series by a label (its place in the run
    and a hash of its UID), never by the folder they were given (the name in it), a header's name or ID, or the
    folder of another patient a query found as a neighbour; ``fingerprint`` names its series the same way, and drops
    an unexpected error's message (it may quote the folder); only ``--show-paths`` prints the folder."""
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("DBP_VERIFICATION", "false")  # the fingerprint's neighbours are enough here; 3D checks cost
    john = tmp_path / "DOE^JOHN_12345" / "t1"
    jane = tmp_path / "ROE^JANE_67890" / "t1"
    john_uid = str(pydicom.dcmread(write_series(small_heads["colin"], john, patient_id=PATIENT_ID,
                                                patient_name=PATIENT_NAME)[0], stop_before_pixels=True).SeriesInstanceUID)
    write_series(small_heads["colin"], jane, patient_id="PHI-ID-90211", patient_name=PATIENT_NAME,
                 orientation="sagittal")
    index = tmp_path / "index"
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    shown = []
    scout, _ = planted_series(tmp_path / "DOE^JOHN_12345" / "scout", seed=82)  # rejected: the detail is printed
    for args in (["slice", str(scout[0].parent)], ["slice", "--json", str(scout[0].parent)]):
        sliced = runner.invoke(app, args)
        assert sliced.exit_code == 3 and "too_few_slices" in sliced.output, sliced.output
        assert_no_phi(sliced.output, "slice's output", "DOE^JOHN", "12345")
    fingerprinted = [runner.invoke(app, ["fingerprint", *extra, str(john), str(scout[0].parent)])
                     for extra in ([], ["--json"])]  # John's own folder (fingerprinted) and the scout (rejected)
    for result in fingerprinted:
        assert result.exit_code == 1 and "too_few_slices" in result.output, result.output  # the detail is kept
        # Not "12345" here: one of the 512 floats may hold those digits.
        assert_no_phi(result.output, "fingerprint's output", "DOE^JOHN", str(tmp_path))
    assert re.search(r"^1/2 series:[0-9a-f]{12}\tOK\t", fingerprinted[0].output, re.M), fingerprinted[0].output
    assert re.search(r"^2/2 series:[0-9a-f]{12}\tREJECTED\ttoo_few_slices: ", fingerprinted[0].output, re.M)
    good, rejected = [json.loads(line) for line in fingerprinted[1].output.splitlines() if line.startswith("{")]
    assert len(good["fingerprint"]) == 512 and good["series"]["series_instance_uid"] == john_uid
    assert rejected["rejected"] == "too_few_slices" and rejected["detail"]
    assert [line["label"].split()[0] for line in (good, rejected)] == ["1/2", "2/2"]
    assert "series_dir" not in good and "series_dir" not in rejected
    for args in (["enroll", "--no-progress", "--json", "--index", str(index), str(john.parent)],
                 ["query", "--json", "--index", str(index), str(jane.parent)],
                 ["query", "--index", str(index), str(jane.parent)]):
        result = runner.invoke(app, args)
        shown.append(result.output)
        assert result.exit_code in (EXIT_OK, EXIT_ALARM, EXIT_REJECTED), result.output  # the scout; John found
    missing = runner.invoke(app, ["query", "--index", str(index), str(tmp_path / "DOE^JOHN_12345" / "gone")])
    assert missing.exit_code == 2 and "PATH 1 does not exist" in missing.output, missing.output
    shown.append(missing.output)
    assert john_uid in shown[1]  # the query did list John's series as a neighbour
    assert_no_phi("\n".join(shown), "enroll/query output", "PHI-ID-90211")
    for output in shown:  # neither the folder given nor another patient's: no path at all
        for name in ("DOE^JOHN", "ROE^JANE", str(tmp_path)):
            assert name not in output, f"{name!r} in enroll/query output: {output}"
    enrolled = [json.loads(line) for line in shown[0].splitlines() if line.startswith("{")]
    labels = sorted(line["series"] for line in enrolled)
    assert len(labels) == 2 and all(re.fullmatch(r"[12]/2 series:[0-9a-f]{12}", label) for label in labels), labels
    assert all("series_dir" not in line and "folder" not in line.get("source", {}) for line in enrolled)
    assert re.search(r"1/1 series:[0-9a-f]{12}", shown[2])  # the human-readable line names the label
    # Asked for, the folder is printed (the operator's own choice, on a terminal).
    asked = runner.invoke(app, ["query", "--json", "--show-paths", "--index", str(index), str(jane.parent)])
    (line,) = [json.loads(text) for text in asked.output.splitlines() if text.startswith("{")]
    assert line["series_dir"] == line["source"]["folder"] == str(jane.parent)
    assert "DOE^JOHN" not in asked.output  # still never another patient's folder
    # An unexpected error's message quotes the folder (a file error's does): fingerprint prints its class only.
    def unreadable(path: Path, **_: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("fingerprint.model.fingerprinter.fingerprint_series", unreadable)
    failed = {flags: runner.invoke(app, ["fingerprint", *flags, str(john)])
              for flags in ((), ("--json",), ("--json", "--show-paths"))}
    assert all(result.exit_code == 1 for result in failed.values()), failed
    assert "1/1\tREJECTED\tPermissionError\n" in failed[()].output, failed[()].output
    (line,) = [json.loads(text) for text in failed[("--json",)].output.splitlines() if text.startswith("{")]
    assert line == {"label": "1/1", "error": "PermissionError"}
    for result in (failed[()], failed[("--json",)]):
        assert "DOE^JOHN" not in result.output and str(tmp_path) not in result.output, result.output
    (line,) = [json.loads(text) for text in failed[("--json", "--show-paths")].output.splitlines()
               if text.startswith("{")]
    assert line["series_dir"] == str(john) and str(john) in line["detail"]  # asked for: the folder and the message
    assert_no_phi(caplog.text, "the CLI's logs", "PHI-ID-90211")

