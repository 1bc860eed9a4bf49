"""Credentials reach the processes only through the environment or a secrets file: never on a command line (which
any user of the host reads from ``/proc/<pid>/cmdline``), never in a log, never as a literal in the committed
deployment configuration."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from deepbrainprint import supervisor as service
from deepbrainprint.settings import load_settings

from test_modes_service import _pings, children_of
from test_worker_embedded import wait_for

REPO = Path(__file__).resolve().parents[1]
#: Values that are placeholders, not secrets: the example file's "change-me", and compose's ${VARIABLE} references.
PLACEHOLDERS = re.compile(r"^(\$\{[A-Z_]+(:\?[^}]*)?\}|change-me|)$")
ASSIGNED = re.compile(
    r"""(?ix)((?:password|passwd|secret|hash_key|token|requirepass)\w*)["']?\s*[:=]\s*["']?(\$\{[^}]*\}|[^"'\s,}#]*)""")
URL_PASSWORD = re.compile(r"[a-z+]+://[^/\s:@'\"]*:(\$\{[^}]*\}|[^@\s/'\"]+)@")
COMMENT = re.compile(r"(^|\s)#.*$", re.MULTILINE)  # TOML, YAML, shell and unit-file comments: prose, not values


def literal_secrets(text: str) -> list[str]:
    """The secrets written into ``text`` as literals: assigned to a password-like key, or in a URL's user info."""
    text = re.sub(r"\$\{[^}]*\}", "${REF}", COMMENT.sub("", text))  # a reference's own words are no assignment
    found = [m.group(2) for m in ASSIGNED.finditer(text)
             if not PLACEHOLDERS.match(m.group(2)) and not m.group(1).lower().endswith("_file")]  # _FILE: a path
    found += [m.group(1) for m in URL_PASSWORD.finditer(text) if not PLACEHOLDERS.match(m.group(1))]
    return found


def test_the_secret_scanner_finds_planted_secrets() -> None:
    """The check below can fail: each way of writing a secret down is found, and placeholders are not."""
    assert literal_secrets('orthanc_password = "hunter2"') == ["hunter2"]
    assert literal_secrets("POSTGRES_PASSWORD=s3cr3t") == ["s3cr3t"]
    assert literal_secrets('  "RegisteredUsers": {"dbp": "x"}, "password": "pw1"') == ["pw1"]
    assert literal_secrets("DBP_STORE_URL: postgresql+psycopg://dbp:letmein@db:5432/x") == ["letmein"]
    assert literal_secrets("DBP_STORE_URL: postgresql+psycopg://dbp:${POSTGRES_PASSWORD:?set it}@db:5432/x") == []
    assert literal_secrets("ORTHANC_PASSWORD=change-me\npatient_id_hash_key = ''") == []
    assert literal_secrets("# DICOM has no passwords: who may send\n") == []  # a comment is prose
    assert literal_secrets("DBP_ORTHANC_PASSWORD_FILE=/etc/deepbrainprint/orthanc.password") == []  # where, not what
    assert literal_secrets("requirepass hunter3") == []  # not an assignment: redis.conf is never committed here


def test_committed_deploy_configs_hold_no_literal_secrets() -> None:
    files = [p for p in (REPO / "deploy").rglob("*") if p.is_file()]
    files += list((REPO / "orthanc" / "dbp_orthanc").glob("*.json"))
    assert len(files) >= 8, files  # the compose file, its env example, the TOML, the systemd units, Orthanc's JSON
    found = {str(p.relative_to(REPO)): literal_secrets(p.read_text(errors="replace")) for p in files}
    assert {name: secrets for name, secrets in found.items() if secrets} == {}
    registered = (REPO / "orthanc" / "dbp_orthanc" / "orthanc.json").read_text()
    assert re.search(r'"RegisteredUsers":\s*\{\s*\}', registered)  # users are written at start, never committed


def test_secrets_come_from_files_named_in_the_environment_or_the_settings_file(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch
) -> None:
    for name in list(os.environ):
        if name.startswith("DBP_"):
            monkeypatch.delenv(name)
    (tmp_path / "orthanc.pw").write_text("from-the-env-file\n")
    (tmp_path / "hash.key").write_text("key-from-toml-file")
    (tmp_path / "dbp.toml").write_text(f'patient_id_hash_key_file = "{tmp_path / "hash.key"}"\n'
                                       f'dicom_tls_cert_file = "{tmp_path / "cert.pem"}"\n')
    monkeypatch.setenv("DBP_ORTHANC_PASSWORD_FILE", str(tmp_path / "orthanc.pw"))
    settings = load_settings(tmp_path / "dbp.toml")
    assert settings.orthanc_password == "from-the-env-file"  # one final newline dropped, nothing else
    assert settings.patient_id_hash_key == "key-from-toml-file"
    assert settings.dicom_tls_cert_file == tmp_path / "cert.pem"  # a real *_file setting stays a path
    monkeypatch.setenv("DBP_ORTHANC_PASSWORD", "from-the-environment")
    assert load_settings(tmp_path / "dbp.toml").orthanc_password == "from-the-environment"
    monkeypatch.setenv("DBP_ORTHANC_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        load_settings()  # a secrets file that is not there is an error, never a silent empty password


def descendants(pid: int) -> list[int]:
    found = children_of(pid)
    return [grand for child in found for grand in (child, *descendants(child))]


@pytest.mark.slow
def test_no_credential_on_any_command_line_or_in_any_log_of_up(tmp_path, postgres_schema_url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``deepbrainprint up`` with every credential set through secrets files: a Redis that requires a password, a
    PostgreSQL URL with one, the Orthanc password, the PatientID hash key, the dashboard's session key. No process
    it starts (SCP, worker and its pool, Orthanc, dashboard) shows any of them in its command line or its log."""
    from dbp_orthanc import server
    from werkzeug.security import generate_password_hash

    if not Path(server.ORTHANC_BINARY).exists():
        pytest.skip("Orthanc is not installed")
    for name in list(os.environ):
        if name.startswith("DBP_") and name != "DBP_SHARED_DATA":
            monkeypatch.delenv(name)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    secrets = {name: f"{name}-{uuid.uuid4().hex}" for name in ("redis", "postgres", "orthanc", "hashkey", "session")}
    redis_port = server.free_port()
    (tmp_path / "redis.conf").write_text(f"port {redis_port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\n"
                                         f"dir {tmp_path}\nrequirepass {secrets['redis']}\n")
    redis_server = subprocess.Popen(["redis-server", str(tmp_path / "redis.conf")], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
    store_url = postgres_schema_url.replace("postgres@", f"postgres:{secrets['postgres']}@", 1)  # trust auth: unused
    files = {"BROKER_URL": f"redis://:{secrets['redis']}@127.0.0.1:{redis_port}/0", "STORE_URL": store_url,
             "ORTHANC_PASSWORD": secrets["orthanc"], "PATIENT_ID_HASH_KEY": secrets["hashkey"],
             "DASHBOARD_SECRET_KEY": secrets["session"]}
    for name, value in files.items():
        path = tmp_path / "secrets" / name.lower()
        path.parent.mkdir(exist_ok=True)
        path.write_text(value + "\n")
        monkeypatch.setenv(f"DBP_{name}_FILE", str(path))
    monkeypatch.setenv("DBP_DASHBOARD_USERS", f"alice:{generate_password_hash('not-checked-here')}")
    monkeypatch.setenv("DBP_DASHBOARD_PORT", str(server.free_port()))
    settings = load_settings(home=tmp_path / "home", port=server.free_port(), queue_prefix=f"dbp-cred-{uuid.uuid4().hex[:6]}")
    assert settings.broker_url.startswith("redis://:redis-") and settings.orthanc_password == secrets["orthanc"]
    layout = service.ServiceLayout.for_settings(settings)
    try:
        import redis

        client = redis.Redis(port=redis_port, password=secrets["redis"])
        assert wait_for(lambda: _pings(client), 10), "private redis did not start"
        started = service.up(settings, workers=1, pool="prefork", concurrency=1, with_orthanc=True,
                             orthanc_http_port=server.free_port(), orthanc_dicom_port=server.free_port())
        assert set(started) == {"orthanc", "scp", "worker-1", "dashboard"}
        # Once the worker is ready its pool process exists and Celery has set its process titles.
        assert wait_for(lambda: "ready." in layout.log_file("worker-1").read_text(errors="replace"), 120), \
            layout.log_file("worker-1").read_text(errors="replace")[-3000:]
        pids = [pid for top in started.values() for pid in (top, *descendants(top))]
        assert len(pids) > len(started)  # the worker's pool process is among them
        for pid in pids:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            for name, secret in secrets.items():
                assert secret not in command_line, f"the {name} secret is on the command line of {command_line!r}"
    finally:
        service.down(settings)
        redis_server.kill()
        redis_server.wait(10)
    logs = [layout.log_file(name) for name in ("scp", "worker-1", "dashboard", "orthanc")]
    text = "".join(log.read_text(errors="replace") for log in logs)
    assert "celery@" in text or "ready." in text  # the logs are the real output of the processes
    for name, secret in secrets.items():
        assert secret not in text, f"the {name} secret is in a log"

