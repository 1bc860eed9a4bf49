"""The files for real hosts (Docker does not run here): the compose file, the systemd units and the example
settings must parse, and every command they run must be a valid ``deepbrainprint`` command line."""

from __future__ import annotations

import configparser
import json
import shlex
from pathlib import Path

import pytest
import typer.main

from deepbrainprint.cli.app import app
from deepbrainprint.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ORTHANC = Path(__file__).resolve().parents[1] / "orthanc" / "dbp_orthanc"


def assert_valid_cli(args: list[str]) -> None:
    """Parse ``deepbrainprint <args>`` with the real CLI (no command runs); fails on unknown commands/options."""
    command = typer.main.get_command(app)
    ctx = command.context_class(command, info_name="deepbrainprint")
    sub = command.get_command(ctx, args[0])  # type: ignore[attr-defined]
    assert sub is not None, f"unknown command {args[0]}"
    sub.make_context(args[0], list(args[1:]), parent=ctx)


def test_compose_file_has_every_service_and_valid_commands() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "orthanc", "scp", "worker"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] >= 2
    for name in ("scp", "worker"):
        assert_valid_cli(services[name]["command"])
        env = services[name]["environment"]
        assert env["DBP_BROKER_URL"].startswith("redis://redis:")
        assert env["DBP_STORE_URL"].startswith("postgresql+psycopg://")
        assert "DBP_PATIENT_ID_HASH_KEY" in env
        assert "spool:/var/lib/deepbrainprint/spool" in services[name]["volumes"]
    assert services["scp"]["environment"]["DBP_ALLOWED_CALLING_AES"]  # bound to 0.0.0.0: allow-list required
    # Orthanc's REST API is published on loopback only.
    assert all(not p.startswith("8042") for p in services["orthanc"]["ports"])


def test_bad_cli_line_is_caught_by_the_validator() -> None:
    with pytest.raises(Exception, match="no-such-option"):  # typer's vendored click raises NoSuchOption
        assert_valid_cli(["worker", "--no-such-option"])
    with pytest.raises(AssertionError, match="unknown command"):
        assert_valid_cli(["no-such-command"])


@pytest.mark.parametrize("unit", ["deepbrainprint-scp.service", "deepbrainprint-worker@.service"])
def test_systemd_units_run_valid_commands(unit: str) -> None:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / unit)
    service = parser["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/deepbrainprint")
    assert_valid_cli([a.replace("%i", "1").replace("%H", "host") for a in argv[1:]])
    assert service["EnvironmentFile"].startswith("/etc/deepbrainprint/")
    assert "password" not in service["ExecStart"].lower()
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_example_settings_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DBP_CONFIG", "DBP_HOME", "DBP_BROKER_URL", "DBP_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(DEPLOY / "deepbrainprint.toml")
    assert settings.broker_url.startswith("redis://")
    assert settings.store_url.startswith("postgresql+psycopg://")
    assert settings.allowed_calling_aes


def test_compose_orthanc_declares_the_same_metadata_as_ours() -> None:
    ours = json.loads((ORTHANC / "orthanc.json").read_text())
    compose = json.loads((DEPLOY / "orthanc-compose.json").read_text())
    assert compose["UserMetadata"] == ours["UserMetadata"]
    assert compose["AuthenticationEnabled"] is True
