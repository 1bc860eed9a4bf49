"""Service and scaled-out modes on real processes: ``up`` starts the SCP, Celery workers (real Redis) and a real
Orthanc in the background; series go in through Orthanc's REST API or the SCP; ``down`` stops everything."""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path

import pydicom
import pytest
from dbp_orthanc import server, writeback
from reliability_log import record_jobs
from sqlalchemy import create_engine, text

from deepbrainprint import supervisor as service
from deepbrainprint.settings import Settings, load_settings
from dicom_node.scu import send_instances
from fingerprint.imaging.dicom_write import noise_series
from worker.ledger import DONE, Ledger

TIMEOUT_S = 240.0


def wait_for(condition, timeout_s: float = TIMEOUT_S, interval_s: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    return condition()


def service_settings(home: Path, redis_url: str, **overrides) -> Settings:  # type: ignore[no-untyped-def]
    """A private Redis DB number and queue prefix per run, so parallel runs and other tests never share work."""
    base = redis_url.rsplit("/", 1)[0]
    values = dict(home=home, port=server.free_port(), quiet_time_s=0.5, broker_url=f"{base}/13",
                  queue_prefix=f"dbp-test-{uuid.uuid4().hex[:8]}", retry_backoff_max_s=2.0)
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):  # the shared data and the reliability bench's log are the test run's, not settings
        if name.startswith("DBP_") and name not in ("DBP_SHARED_DATA", "DBP_RELIABILITY_LOG"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def wait_workers_ready(settings: Settings, names: list[str]) -> None:
    layout = service.ServiceLayout.for_settings(settings)

    def ready() -> bool:
        return all("ready." in layout.log_file(n).read_text(errors="replace") for n in names
                   if layout.log_file(n).exists())

    assert wait_for(ready, 120), {n: layout.log_file(n).read_text()[-2000:] for n in names}


def upload(client, datasets: list[pydicom.Dataset]) -> None:  # type: ignore[no-untyped-def]
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        client.upload(buffer.getvalue())


@pytest.mark.slow
def test_series_stored_in_orthanc_ends_as_verdict_in_its_metadata(  # type: ignore[no-untyped-def]
    tmp_path, redis_url, write_head_series, clean_env
) -> None:
    if not Path(server.ORTHANC_BINARY).exists():
        pytest.skip("Orthanc is not installed")
    settings = service_settings(tmp_path / "home", redis_url)
    started = service.up(settings, workers=1, pool="solo", with_orthanc=True, orthanc_http_port=server.free_port(),
                         orthanc_dicom_port=server.free_port(), orthanc_stable_age_s=1)
    try:
        assert set(started) == {"scp", "worker-1", "orthanc"}
        wait_workers_ready(settings, ["worker-1"])
        client = writeback.make_client(settings.orthanc_url, settings.orthanc_username, settings.orthanc_password)
        head = [pydicom.dcmread(p) for p in write_head_series(tmp_path / "head", "colin", "SVC-PATIENT-1")]
        scout = noise_series(6, seed=31, patient_id="SVC-PATIENT-2")
        upload(client, head)
        upload(client, scout)

        def verdicts() -> dict | None:
            found = {name: writeback.read_verdict(client, str(series[0].SeriesInstanceUID))
                     for name, series in (("head", head), ("scout", scout))}
            return found if all(writeback.METADATA_VERDICT in v for v in found.values()) else None

        found = wait_for(verdicts)
        layout = service.ServiceLayout.for_settings(settings)
        assert found, (layout.log_file("worker-1").read_text()[-3000:], layout.log_file("scp").read_text()[-2000:])
        assert found["head"][writeback.METADATA_VERDICT] == "new_patient"
        assert found["head"][writeback.METADATA_MODEL_VERSION]
        assert found["scout"][writeback.METADATA_VERDICT] == "rejected"
        for name in ("worker-1", "scp"):
            assert "SVC-PATIENT" not in layout.log_file(name).read_text()  # no PHI in the logs
    finally:
        stopped = service.down(settings)
    assert set(stopped) == set(started)
    assert service.ServiceLayout.for_settings(settings).running() == {}


@pytest.mark.slow
def test_two_workers_one_redis_one_postgres_keep_the_index_consistent(  # type: ignore[no-untyped-def]
    tmp_path, redis_url, postgres_schema_url, write_head_series, small_heads, clean_env
) -> None:
    settings = service_settings(tmp_path / "home", redis_url, store_url=postgres_schema_url)
    started = service.up(settings, workers=2, pool="solo")
    series: list[list[Path]] = []
    heads = [("colin", "axial"), ("colin", "sagittal"), ("mni" if "mni" in small_heads else "colin", "coronal")]
    for number, (head, orientation) in enumerate(heads):
        series.append(write_head_series(tmp_path / f"head-{number}", head, f"SCALE-{number}", orientation))
    for number in range(3):
        folder = tmp_path / f"scout-{number}"
        folder.mkdir()
        paths = []
        for index, ds in enumerate(noise_series(6, seed=40 + number, patient_id=f"SCALE-S{number}")):
            paths.append(folder / f"{index}.dcm")
            ds.save_as(paths[-1], enforce_file_format=True)
        series.append(paths)
    ledger = Ledger(settings.store_url)
    try:
        wait_workers_ready(settings, ["worker-1", "worker-2"])
        for paths in series:
            assert send_instances(paths, settings.port, called_ae=settings.ae_title).all_ok
        layout = service.ServiceLayout.for_settings(settings)
        done = wait_for(lambda: ledger.counts()[DONE] == len(series))
        assert done, (ledger.counts(), layout.log_file("worker-1").read_text()[-3000:])
    finally:
        stopped = service.down(settings)
    assert set(stopped) == set(started)
    jobs = ledger.all_jobs()
    ledger.close()
    uids = {str(pydicom.dcmread(p[0], stop_before_pixels=True).SeriesInstanceUID) for p in series}
    assert {job.verdict["series_instance_uid"] for job in jobs} == uids
    assert sum(job.verdict["verdict"] == "rejected" for job in jobs) == 3
    # Each worker really worked (prefetch 1, solo pool): the load was spread.
    for name in ("worker-1", "worker-2"):
        assert "succeeded" in layout.log_file(name).read_text(), f"{name} processed nothing"
    # Every series recorded exactly once; the FAISS index holds exactly the store's fingerprints.
    engine = create_engine(settings.store_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT series_instance_uid, count(*) FROM dbp_series GROUP BY 1")).all()
    engine.dispose()
    assert sorted(uid for uid, _ in rows) == sorted(uids) and all(count == 1 for _, count in rows)
    from fingerprint.identity.archive import Archive

    model_version = next(job.verdict["model_version"] for job in jobs if job.verdict["verdict"] != "rejected")
    for name in ("worker-1", "worker-2"):
        own = load_settings(home=settings.home, store_url=settings.store_url,
                            patient_id_hash_key=settings.patient_id_hash_key,
                            index_dir=settings.resolved_index_dir / "workers" / name)
        with Archive(own.archive_config()) as archive:
            with archive.store.reading() as conn:
                stored = archive.store.count_fingerprinted(conn, model_version)
            assert stored == 3
            assert archive.index_for(model_version).ntotal == stored


@pytest.mark.slow
def test_celery_writeback_retries_while_orthanc_is_down(tmp_path, redis_url, clean_env) -> None:  # type: ignore[no-untyped-def]
    if not Path(server.ORTHANC_BINARY).exists():
        pytest.skip("Orthanc is not installed")
    instance = server.write_config(
        tmp_path / "orthanc", username="radiology", password="pw-celery", http_port=server.free_port(),
        dicom_port=server.free_port(), scp_ae_title="DEEPBRAINPRINT", scp_port=server.free_port(), stable_age_s=60,
    )
    server.start(instance)
    client = writeback.make_client(instance.url, instance.username, instance.password)
    scout = noise_series(6, seed=60, patient_id="SVC-WB-1")
    upload(client, scout)
    server.stop(instance)  # down before the verdict exists
    settings = service_settings(tmp_path / "home", redis_url, orthanc_url=instance.url,
                                orthanc_username="radiology", orthanc_password="pw-celery")
    service.up(settings, workers=1, pool="solo")
    ledger = Ledger(settings.store_url)
    try:
        wait_workers_ready(settings, ["worker-1"])
        assert send_instances(scout, settings.port, called_ae=settings.ae_title).all_ok
        assert wait_for(lambda: ledger.counts()[DONE] == 1 and ledger.all_jobs()[0].writeback_attempts >= 1, 120)
        job = ledger.all_jobs()[0]
        assert job.writeback_state == "pending" and job.verdict["verdict"] == "rejected"  # kept meanwhile
        server.start(instance)
        found = wait_for(lambda: writeback.read_verdict(client, str(scout[0].SeriesInstanceUID)), 60)
        written = wait_for(lambda: ledger.all_jobs()[0].writeback_state == "done", 20)
        record_jobs("Orthanc down during write-back (Celery)", ledger.all_jobs() if written else [], sent=1)
        assert found and found[writeback.METADATA_VERDICT] == "rejected"
        assert written
    finally:
        service.down(settings)
        server.stop(instance, timeout_s=0.0)
        ledger.close()


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def start_another_worker(settings: Settings, name: str) -> int:
    """A worker started after ``up``, as a replacement host would be (its own index folder, the service's settings)."""
    layout = service.ServiceLayout.for_settings(settings)
    argv = [*service.CLI, "worker", "--concurrency", "1", "--pool", "prefork", "--name", f"{name}@%h"]
    env = {**service.child_environment(settings), "DBP_INDEX_DIR": str(settings.resolved_index_dir / name)}
    return service.spawn(layout, name, argv, env)


@pytest.mark.slow
def test_worker_process_killed_mid_series_loses_nothing(  # type: ignore[no-untyped-def]
    tmp_path, redis_url, write_head_series, clean_env
) -> None:
    """acks_late + reject_on_worker_lost: the series in hand when a pool process dies is delivered again."""
    import signal

    settings = service_settings(tmp_path / "home", redis_url)
    started = service.up(settings, workers=1, pool="prefork", concurrency=1)
    ledger = Ledger(settings.store_url)
    try:
        wait_workers_ready(settings, ["worker-1"])
        files = write_head_series(tmp_path / "head", "colin", "KILL-PATIENT-1")
        assert send_instances(files, settings.port, called_ae=settings.ae_title).all_ok
        assert wait_for(lambda: ledger.counts()["running"] == 1, 60, interval_s=0.05)
        pool_processes = children_of(started["worker-1"])
        assert pool_processes
        for pid in pool_processes:
            os.kill(pid, signal.SIGKILL)
        done = wait_for(lambda: ledger.counts()[DONE] == 1)
        record_jobs("worker process SIGKILLed mid-series", ledger.all_jobs(), sent=1)
        assert done
        job = ledger.all_jobs()[0]
        assert job.attempts == 2 and job.verdict["verdict"] == "new_patient"
    finally:
        service.down(settings)
        ledger.close()


@pytest.mark.slow
def test_a_whole_worker_host_killed_mid_series_is_redelivered_within_the_visibility_timeout(  # type: ignore[no-untyped-def]
    tmp_path, redis_url, write_head_series, clean_env
) -> None:
    """Every process of the only worker host is SIGKILLed while it holds a series (nothing can reject the message);
    a worker that starts later gets it back once the visibility timeout (10 s here; 5 minutes by default) has passed,
    and the series gets exactly one verdict, within the timeout plus a worker start and kombu's check interval."""
    import signal

    settings = service_settings(tmp_path / "home", redis_url, broker_visibility_timeout_s=10.0)
    started = service.up(settings, workers=1, pool="prefork", concurrency=1)
    ledger = Ledger(settings.store_url)
    try:
        wait_workers_ready(settings, ["worker-1"])
        files = write_head_series(tmp_path / "head", "colin", "HOST-DOWN-1")
        assert send_instances(files, settings.port, called_ae=settings.ae_title).all_ok
        assert wait_for(lambda: ledger.counts()["running"] == 1, 60, interval_s=0.05)
        host = [started["worker-1"], *children_of(started["worker-1"])]
        for pid in host:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(1.0)
        assert ledger.counts()[DONE] == 0
        start_another_worker(settings, "worker-2")
        done = wait_for(lambda: ledger.counts()[DONE] == 1, 120)
        waited = time.monotonic() - killed_at
        record_jobs("whole worker host SIGKILLed mid-series", ledger.all_jobs(), sent=1,
                    redelivered_after_s=round(waited, 1), visibility_timeout_s=10)
        assert done
        # Not before the timeout (nothing could know); after it, the new worker's start and one check for expired
        # messages (every tenth of the timeout), not the hour of Redis's default.
        print(f"redelivered and done {waited:.1f} s after the host was killed")
        assert 10.0 <= waited < 60.0, waited
        (job,) = ledger.all_jobs()
        assert job.verdict["verdict"] == "new_patient" and job.attempts == 2
    finally:
        service.down(settings)
        ledger.close()


class PrivateRedis:
    """A redis-server of our own on a free port (no persistence), that a test may kill and start again."""

    def __init__(self, folder: Path) -> None:
        import shutil
        import subprocess

        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.folder, self.port, self.process = folder, server.free_port(), None
        self._popen = subprocess.Popen
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import subprocess

        import redis

        self.process = self._popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(self.folder)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        assert wait_for(lambda: _pings(client), 10), "private redis did not start"

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def _pings(client) -> bool:  # type: ignore[no-untyped-def]
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


@pytest.mark.slow
def test_series_arriving_while_redis_is_down_are_processed_when_it_returns(  # type: ignore[no-untyped-def]
    tmp_path, write_head_series, clean_env
) -> None:
    """The broker goes away; the SCP keeps accepting series into its durable spool (the senders get success), keeps
    trying to hand them on, and once Redis is back every series gets its verdict, once."""
    broker = PrivateRedis(tmp_path / "redis")
    broker.start()
    settings = service_settings(tmp_path / "home", broker.url, broker_url=broker.url)
    service.up(settings, workers=1, pool="prefork", concurrency=1)
    ledger = Ledger(settings.store_url)
    try:
        wait_workers_ready(settings, ["worker-1"])
        broker.kill()
        # One man twice, under two PatientIDs: whichever is processed first is new, the other a duplicate of it.
        for number, (patient, orientation) in enumerate((("REDIS-DOWN-1", "axial"), ("REDIS-DOWN-2", "sagittal"))):
            files = write_head_series(tmp_path / f"head-{number}", "colin", patient, orientation=orientation)
            assert send_instances(files, settings.port, called_ae=settings.ae_title).all_ok  # accepted meanwhile
        time.sleep(3.0)  # quiet time passed, the hand-ons are failing: nothing can be processed without the broker
        assert ledger.counts()[DONE] == 0
        broker.start()
        done = wait_for(lambda: ledger.counts()[DONE] == 2, 180)
        record_jobs("Redis down while series arrive", ledger.all_jobs(), sent=2)
        assert done, ledger.counts()
        verdicts = sorted(job.verdict["verdict"] for job in ledger.all_jobs())
        assert verdicts == ["new_patient", "possible_duplicate"] and len(ledger.all_jobs()) == 2
    finally:
        service.down(settings)
        ledger.close()
        broker.kill()


@pytest.mark.slow
def test_series_in_the_spool_of_a_killed_scp_are_processed_after_its_restart(  # type: ignore[no-untyped-def]
    tmp_path, redis_url, write_head_series, clean_env
) -> None:
    """The SCP process is SIGKILLed after accepting a series and before handing it on; started again, it finds the
    series in its spool, hands it on, and the series gets its verdict, once."""
    import signal

    settings = service_settings(tmp_path / "home", redis_url, quiet_time_s=5.0)
    started = service.up(settings, workers=1, pool="prefork", concurrency=1)
    ledger = Ledger(settings.store_url)
    layout = service.ServiceLayout.for_settings(settings)
    try:
        wait_workers_ready(settings, ["worker-1"])
        files = write_head_series(tmp_path / "head", "colin", "SCP-KILLED-1")
        assert send_instances(files, settings.port, called_ae=settings.ae_title).all_ok
        os.kill(started["scp"], signal.SIGKILL)  # within the quiet time: accepted, durable, not handed on
        time.sleep(1.0)
        assert ledger.counts() == {"queued": 0, "running": 0, "done": 0, "failed": 0, "writeback_pending": 0}
        service.spawn(layout, "scp", [*service.CLI, "serve"], service.child_environment(settings))
        done = wait_for(lambda: ledger.counts()[DONE] == 1, 120)
        record_jobs("SCP SIGKILLed with series in its spool", ledger.all_jobs(), sent=1)
        assert done, ledger.counts()
        (job,) = ledger.all_jobs()
        assert job.verdict["verdict"] == "new_patient"
    finally:
        service.down(settings)
        ledger.close()


@pytest.mark.slow
def test_a_series_whose_message_a_broker_restart_lost_is_sent_again_by_the_next_worker(  # type: ignore[no-untyped-def]
    tmp_path, write_head_series, clean_env
) -> None:
    """No worker is running when a series is handed on; Redis then restarts without persistence and the message is
    gone, while the ledger still says ``queued``. A worker that starts after the visibility timeout sends it again,
    and the series gets its verdict."""
    import signal

    broker = PrivateRedis(tmp_path / "redis")
    broker.start()
    settings = service_settings(tmp_path / "home", broker.url, broker_url=broker.url, broker_visibility_timeout_s=5.0)
    started = service.up(settings, workers=1, pool="prefork", concurrency=1)
    ledger = Ledger(settings.store_url)
    layout = service.ServiceLayout.for_settings(settings)
    try:
        wait_workers_ready(settings, ["worker-1"])
        for pid in [started["worker-1"], *children_of(started["worker-1"])]:
            os.kill(pid, signal.SIGKILL)  # no consumer: the message waits in Redis
        files = write_head_series(tmp_path / "head", "colin", "LOST-MESSAGE-1")
        assert send_instances(files, settings.port, called_ae=settings.ae_title).all_ok
        assert wait_for(lambda: ledger.counts()["queued"] == 1, 60)
        broker.kill()
        broker.start()  # empty: the message is lost
        time.sleep(6.0)  # longer than the visibility timeout: the job is stale
        start_another_worker(settings, "worker-2")
        done = wait_for(lambda: ledger.counts()[DONE] == 1, 120)
        record_jobs("broker restarted empty (message lost)", ledger.all_jobs(), sent=1)
        assert done, ledger.counts()
        (job,) = ledger.all_jobs()
        assert job.verdict["verdict"] == "new_patient"
        assert "queued series sent again" in layout.log_file("worker-2").read_text(errors="replace")
    finally:
        service.down(settings)
        ledger.close()
        broker.kill()
