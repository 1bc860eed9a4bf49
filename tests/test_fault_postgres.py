"""PostgreSQL restarted while the scaled-out service works: no verdict lost or doubled, FAISS and the store agree.

The server is a private one (``initdb`` into a temporary folder, its own port and socket folder), never the shared
one on 5432: the test stops it under the workers' feet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pydicom
import pytest
from dbp_orthanc import server
from reliability_log import record_jobs
from sqlalchemy import create_engine, text
from test_fault_load import head_at_4mm, refused_series
from test_modes_service import clean_env, service_settings, wait_for, wait_workers_ready  # noqa: F401 - fixture

from deepbrainprint import supervisor as service
from dicom_node.scu import send_instances
from fingerprint.identity.index import FingerprintIndex
from fingerprint.imaging.dicom_write import write_series
from worker.ledger import DONE, Ledger

PG_BIN = Path(os.environ.get("DBP_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PrivatePostgres:
    """A PostgreSQL server of our own (trust authentication on 127.0.0.1, a free port) that a test may stop and
    start again. The server refuses to run as root, so as root its files belong to the ``postgres`` user and its
    commands run as that user (``runuser``)."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (set DBP_TEST_PG_BIN)")
        self.as_owner: list[str] = []
        self.folder = Path(tempfile.mkdtemp(prefix="dbp-pg-"))  # /tmp: a path the postgres user can reach
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser: cannot start a private PostgreSQL")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.folder, "postgres", "postgres")
        self.port = server.free_port()
        self.data = self.folder / "data"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([*self.as_owner, str(PG_BIN / program), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{program} failed: {done.stderr[-2000:]}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: every session is cut off and open transactions roll back, as in a restart for maintenance."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        subprocess.run([*self.as_owner, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def index_file_agrees_with_store(index_dir: Path, store_url: str, model_version: str) -> tuple[bool, str]:
    """The FAISS index a worker saved holds exactly the store's fingerprints up to the store sequence number it
    says it has caught up to (no row missing, none extra, none from a rolled-back transaction)."""
    index = FingerprintIndex.open(index_dir, model_version)
    if index.index is None:
        return False, f"no index file in {index_dir}: {index.load_problem}"
    engine = create_engine(store_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, seq FROM dbp_series WHERE model_version = :v AND status = 'fingerprinted'"),
                            {"v": model_version}).all()
        store_max = conn.execute(text("SELECT max(seq) FROM dbp_series")).scalar_one()
    engine.dispose()
    wanted = {row_id for row_id, seq in rows if seq <= index.max_seq}
    held = {row_id for row_id in wanted if _holds(index, row_id)}
    agrees = held == wanted and index.ntotal == len(wanted) and index.max_seq <= store_max
    return agrees, f"index holds {index.ntotal} rows, {sorted(held)} of {sorted(wanted)} (seq {index.max_seq}); store {rows}"


def _holds(index: FingerprintIndex, row_id: int) -> bool:
    try:
        index.index.reconstruct(int(row_id))
    except RuntimeError:  # FAISS: no vector with this id
        return False
    return True


@pytest.mark.slow
def test_postgres_restarted_between_a_recorded_verdict_and_its_finished_job_loses_and_doubles_nothing(  # type: ignore[no-untyped-def]
    tmp_path, redis_url, small_heads, clean_env
) -> None:
    """Two workers on a private PostgreSQL each take a head (one man under two PatientIDs). The restart is aimed at
    the narrowest window: the job table is locked, so both verdicts are committed to the store while neither job can
    be marked done; the server is then stopped (every session cut off), a series arrives while it is down, and it is
    started again. Each head must keep the verdict it was recorded with (``new_patient`` for the first,
    ``possible_duplicate`` for the second: deciding again would flag both), every series must have one verdict and
    one store row, and each worker's FAISS index must hold exactly the store's rows."""
    database = PrivatePostgres()
    try:
        database.start()
        settings = service_settings(tmp_path / "home", redis_url, store_url=database.url)
        service.up(settings, workers=2, pool="prefork", concurrency=1)
        layout = service.ServiceLayout.for_settings(settings)
        ledger = Ledger(settings.store_url)
        head = head_at_4mm(small_heads)
        templates: dict = {}
        series = [write_series(head, tmp_path / f"head-{n}", patient_id=f"PG-HEAD-{n}") for n in (1, 2)]
        series += [refused_series(tmp_path / f"refused-{n}", kind, n, templates)
                   for n, kind in enumerate(("localizer", "phase", "few"))]
        uids = [str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID) for files in series]
        store = create_engine(settings.store_url, pool_pre_ping=True)
        try:
            wait_workers_ready(settings, ["worker-1", "worker-2"])
            for files in series[:2]:
                assert send_instances(files, settings.port, called_ae=settings.ae_title).all_ok
            assert wait_for(lambda: ledger.counts()["running"] == 2, 60, 0.1), ledger.counts()
            with store.connect() as lock:  # reads go on; writes to the job table wait (SHARE conflicts with UPDATE)
                lock.execute(text("LOCK TABLE dbp_worker_jobs IN SHARE MODE"))
                for files in series[2:4]:
                    assert send_instances(files, settings.port, called_ae=settings.ae_title).all_ok
                # Both verdicts committed to the store, both "done" updates waiting: cut those sessions off, then
                # stop the server (they cannot slip through when the lock goes with it).
                assert wait_for(lambda: _store_rows(store) == 2 and len(_finishing(store)) == 2, 120), \
                    (_store_rows(store), _finishing(store), _sessions(store))
                lock.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(:p)"),
                             {"p": _finishing(store)})
                database.stop()
                lock.invalidate()  # its session is gone with the server: nothing to roll back
            stopped_at = time.monotonic()
            assert send_instances(series[4], settings.port, called_ae=settings.ae_title).all_ok  # into the spool
            assert wait_for(lambda: "hand-on failed" in layout.log_file("scp").read_text(errors="replace"), 60)
            database.start()
            down_s = time.monotonic() - stopped_at

            def all_done() -> bool:
                counts = ledger.counts()
                return counts[DONE] == len(series) and counts["queued"] + counts["running"] == 0

            done = wait_for(all_done, 180)
            recovered_s = time.monotonic() - stopped_at
            jobs = ledger.all_jobs()
            verdicts = {job.verdict["series_instance_uid"]: job.verdict for job in jobs if job.verdict}
            print(f"PostgreSQL down {down_s:.1f} s; every series done {recovered_s:.1f} s after the stop; "
                  f"attempts {sorted(job.attempts for job in jobs)}")
            record_jobs("PostgreSQL restarted during work", jobs, sent=len(series), database_down_s=round(down_s, 1),
                        recovered_s=round(recovered_s, 1))
            assert done, ledger.counts()
        finally:
            service.down(settings)
            ledger.close()
        assert len(jobs) == len(series) and sorted(verdicts) == sorted(uids)
        assert sorted(verdicts[uid]["verdict"] for uid in uids[:2]) == ["new_patient", "possible_duplicate"]
        assert [verdicts[uid].get("rejected") for uid in uids[2:]] == ["localizer", "not_t1_brain", "too_few_slices"]
        with store.connect() as conn:
            rows = dict(conn.execute(text("SELECT series_instance_uid, count(*) FROM dbp_series GROUP BY 1")).all())
            recorded = dict(conn.execute(text("SELECT series_instance_uid, verdict FROM dbp_series")).all())
        store.dispose()
        assert rows == {uid: 1 for uid in uids}
        assert all(recorded[uid] == verdicts[uid]["verdict"] for uid in uids), (recorded, verdicts)
        model_version = verdicts[uids[0]]["model_version"]
        for name in ("worker-1", "worker-2"):
            agrees, detail = index_file_agrees_with_store(settings.resolved_index_dir / "workers" / name,
                                                          settings.store_url, model_version)
            assert agrees, f"{name}: {detail}"
    finally:
        database.remove()


def _finishing(engine) -> list[int]:  # type: ignore[no-untyped-def]
    """Sessions waiting on the job table's lock to mark a job done (a worker's ``Ledger.finish``)."""
    query = text("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE dbp_worker_jobs%'"
                 " AND query LIKE '%verdict=%'")
    with engine.connect() as conn:
        return [int(pid) for pid in conn.execute(query).scalars()]


def _sessions(engine) -> list[tuple]:  # type: ignore[no-untyped-def]
    """Every other client session: what it runs or waits on (for a failure's message)."""
    query = text("SELECT pid, application_name, state, wait_event_type, wait_event, left(query, 160) FROM pg_stat_activity"
                 " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query).all()]


def _store_rows(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM dbp_series")).scalar_one())
