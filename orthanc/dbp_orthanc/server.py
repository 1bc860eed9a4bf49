"""Run a real Orthanc 1.10+ beside the product: write its configuration, start it, wait for it, stop it.

Used by ``deepbrainprint up --with-orthanc`` and by the end-to-end tests. Each instance gets its own directory
(storage, index, configuration, log) and its own ports, so tests and a running service never share state. The base
configuration is ``orthanc.json`` beside this module (remote access off, authentication on, the verdict metadata declared, the
forwarding plugin loaded); this module fills in what differs per instance.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

PACKAGE_DIR = Path(__file__).resolve().parent
BASE_CONFIG = PACKAGE_DIR / "orthanc.json"
FORWARD_SCRIPT = PACKAGE_DIR / "plugin" / "forward_stable_series.py"
ORTHANC_BINARY = os.environ.get("DBP_ORTHANC_BINARY", shutil.which("Orthanc") or "/usr/sbin/Orthanc")
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for tests and a second instance)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class OrthancInstance:
    """Where one configured Orthanc lives and how to reach it."""

    work_dir: Path
    http_port: int
    dicom_port: int
    aet: str
    username: str
    password: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def config_path(self) -> Path:
        return self.work_dir / "orthanc.json"

    @property
    def pid_path(self) -> Path:
        return self.work_dir / "orthanc.pid"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "orthanc.log"


def write_config(
    work_dir: Path,
    *,
    username: str,
    password: str,
    http_port: int,
    dicom_port: int,
    scp_ae_title: str,
    scp_port: int,
    scp_host: str = "127.0.0.1",
    aet: str = "ORTHANC",
    stable_age_s: int = 5,
    forward_retry_delays_s: list[float] | None = None,
) -> OrthancInstance:
    """Write ``<work_dir>/orthanc.json`` for one instance and return how to reach it.

    The file holds the password, so it is created readable by its owner only.
    """
    if not password:
        raise ValueError("an Orthanc password is required (authentication is always on)")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads(BASE_CONFIG.read_text())
    storage = work_dir / "storage"
    config.update(
        StorageDirectory=str(storage),
        IndexDirectory=str(storage),
        HttpPort=http_port,
        DicomPort=dicom_port,
        DicomAet=aet,
        RegisteredUsers={username: password},
        StableAge=stable_age_s,
        PythonScript=str(FORWARD_SCRIPT),
    )
    config["DicomModalities"] = {config["DeepBrainPrint"]["ForwardToModality"]: [scp_ae_title, scp_host, scp_port]}
    if not PYTHON_PLUGIN.exists():
        config["Plugins"] = []  # Orthanc still stores and answers; forwarding needs the orthanc-python package
    if forward_retry_delays_s is not None:
        config["DeepBrainPrint"]["RetryDelaysSeconds"] = list(forward_retry_delays_s)
    instance = OrthancInstance(work_dir, http_port, dicom_port, aet, username, password)
    fd = os.open(instance.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh, indent=2)
    return instance


def is_up(instance: OrthancInstance, timeout_s: float = 1.0) -> bool:
    """True when the REST API answers ``/system`` with our credentials."""
    try:
        response = requests.get(
            f"{instance.url}/system", auth=(instance.username, instance.password), timeout=timeout_s
        )
    except requests.RequestException:
        return False
    return response.status_code == 200


def start(instance: OrthancInstance, timeout_s: float = 30.0) -> subprocess.Popen:
    """Start Orthanc in the background (own process group, log in the work dir) and wait until it answers."""
    log = open(instance.log_path, "ab")
    process = subprocess.Popen(
        [ORTHANC_BINARY, f"--logfile={instance.log_path}", str(instance.config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=instance.work_dir,
        start_new_session=True,
    )
    log.close()
    instance.pid_path.write_text(str(process.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with status {process.returncode}; see {instance.log_path}")
        if is_up(instance):
            return process
        time.sleep(0.2)
    stop_pid(process.pid)
    raise RuntimeError(f"Orthanc did not answer within {timeout_s:.0f} s; see {instance.log_path}")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a child of ours that has exited is reaped here and counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:  # not our child: it answered the signal above, so it runs
        return True


def stop_processes(pids: Sequence[int], timeout_s: float) -> None:
    """SIGTERM every process (each can finish cleanly), wait up to ``timeout_s`` for all of them together, then
    SIGKILL those still running. The one way processes are stopped: one Orthanc here, the whole service in
    ``deepbrainprint down``."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop_pid(pid: int, timeout_s: float = 15.0) -> None:
    """Stop one Orthanc by pid: SIGTERM (Orthanc flushes its index), SIGKILL only if it hangs."""
    stop_processes([pid], timeout_s)


def stop(instance: OrthancInstance, timeout_s: float = 15.0) -> None:
    """Stop the instance recorded in its pid file, if any: SIGTERM, then SIGKILL after ``timeout_s``.

    ``timeout_s=0`` kills at once: for a throw-away instance (a test's), whose index nobody reads again."""
    if instance.pid_path.exists():
        stop_pid(int(instance.pid_path.read_text()), timeout_s)
        instance.pid_path.unlink(missing_ok=True)
