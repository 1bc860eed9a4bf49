"""Service mode on one host: ``deepbrainprint up`` starts the SCP, Celery workers and (optionally) a real Orthanc
in the background; ``deepbrainprint down`` stops them. Each process has a pid file and a log under ``<home>/run``.

Configuration reaches the children through the environment (``DBP_*``), never their command lines: the Orthanc
password and the PatientID hash key must not show up in ``ps``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from deepbrainprint.settings import Settings

CLI = [sys.executable, "-m", "deepbrainprint.cli.app"]


@dataclass(frozen=True)
class ServiceLayout:
    """Where ``up`` keeps its pid files, logs and the Orthanc instance."""

    run_dir: Path

    @classmethod
    def for_settings(cls, settings: Settings) -> ServiceLayout:
        return cls(Path(settings.home) / "run")

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        if name == "orthanc":
            return self.orthanc_dir / "orthanc.log"  # Orthanc writes its own log beside its configuration
        return self.run_dir / f"{name}.log"

    @property
    def orthanc_dir(self) -> Path:
        return self.run_dir / "orthanc"

    def running(self) -> dict[str, int]:
        """Processes recorded by pid files that are still alive."""
        from dbp_orthanc.server import process_alive

        alive = {}
        for pid_file in sorted(self.run_dir.glob("*.pid")):
            pid = int(pid_file.read_text().strip() or 0)
            if pid and process_alive(pid):
                alive[pid_file.stem] = pid
        return alive


def check_redis(url: str, timeout_s: float = 2.0) -> None:
    """Raise RuntimeError with a clear message when the broker does not answer (before starting anything)."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s).ping()
    except redis.RedisError as error:
        raise RuntimeError(f"the broker at {url.split('@')[-1]} does not answer: {type(error).__name__}") from None


def child_environment(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for children: the parent's, plus every setting that differs from its default."""
    env = dict(os.environ)
    defaults = Settings(home=settings.home)
    for name, value in vars(settings).items():
        if value != getattr(defaults, name) or name == "home":
            env[f"DBP_{name.upper()}"] = "" if value is None else str(value)
    env.setdefault("OMP_NUM_THREADS", "1")  # one torch thread per worker process; scale with processes instead
    env.update(extra or {})
    return env


def pin_shared_settings(settings: Settings) -> None:
    """Fix what every process must share before giving each worker its own FAISS cache folder: the store URL (by
    default it lives in the index folder) and the PatientID hash key (by default a file in the index folder)."""
    from fingerprint.identity.patient_ids import load_or_create_key

    settings.store_url = settings.resolved_store_url
    settings.patient_id_hash_key = load_or_create_key(settings.resolved_index_dir, settings.patient_id_hash_key).decode("utf-8")


def spawn(layout: ServiceLayout, name: str, argv: list[str], env: dict[str, str]) -> int:
    """Start one background process (own session, log file, pid file)."""
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    with open(layout.log_file(name), "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    layout.pid_file(name).write_text(str(process.pid))
    return process.pid


def up(
    settings: Settings,
    *,
    workers: int = 2,
    concurrency: int = 1,
    pool: str = "prefork",
    with_orthanc: bool = False,
    orthanc_http_port: int = 8042,
    orthanc_dicom_port: int = 4242,
    orthanc_stable_age_s: int = 5,
) -> dict[str, int]:
    """Start the service on this host; returns {name: pid}. Refuses when a previous ``up`` is still running."""
    from dbp_orthanc import server as orthanc_server
    from dbp_orthanc.server import free_port

    layout = ServiceLayout.for_settings(settings)
    if layout.running():
        raise RuntimeError(f"already running ({', '.join(layout.running())}); run `deepbrainprint down` first")
    check_redis(settings.broker_url)
    if not int(settings.port):
        settings.port = free_port()  # Orthanc and senders need the SCP's real port, known before it starts
    if with_orthanc:
        username = settings.orthanc_username or "deepbrainprint"
        password = settings.orthanc_password or secrets.token_urlsafe(18)
        instance = orthanc_server.write_config(
            layout.orthanc_dir, username=username, password=password, http_port=orthanc_http_port,
            dicom_port=orthanc_dicom_port, scp_ae_title=settings.ae_title, scp_port=int(settings.port),
            stable_age_s=orthanc_stable_age_s,
        )
        settings.orthanc_url, settings.orthanc_username, settings.orthanc_password = instance.url, username, password
    pin_shared_settings(settings)
    env = child_environment(settings)
    started: dict[str, int] = {}
    try:
        if with_orthanc:  # first: the one most likely to refuse (port taken), before anything else runs
            started["orthanc"] = orthanc_server.start(instance).pid
            layout.pid_file("orthanc").write_text(str(started["orthanc"]))
        started["scp"] = spawn(layout, "scp", [*CLI, "serve"], env)
        for number in range(1, workers + 1):
            name = f"worker-{number}"
            argv = [*CLI, "worker", "--concurrency", str(concurrency), "--pool", pool, "--name", f"{name}@%h"]
            own_index = {"DBP_INDEX_DIR": str(settings.resolved_index_dir / "workers" / name)}
            started[name] = spawn(layout, name, argv, {**env, **own_index})
        if settings.dashboard_users:  # the dashboard is part of the service wherever someone may log in to it
            started["dashboard"] = spawn(layout, "dashboard", [*CLI, "dashboard"], env)
    except (RuntimeError, OSError):
        down(settings)  # all or nothing: no half-started service left behind
        raise
    return started


def down(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Stop everything ``up`` started (SIGTERM: Celery finishes the series in hand; SIGKILL after ``timeout_s``).
    An interrupted series is not lost: its message was not acknowledged and goes back to the queue."""
    from dbp_orthanc.server import stop_processes

    layout = ServiceLayout.for_settings(settings)
    running = layout.running()
    stop_processes(list(running.values()), timeout_s)
    for pid_file in layout.run_dir.glob("*.pid"):
        pid_file.unlink()
    return list(running)
