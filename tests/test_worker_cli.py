"""The worker's commands through the real CLI: refusals are clear and leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepbrainprint.cli.app import app


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DBP_CONFIG", "DBP_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DBP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_up_refuses_when_the_broker_does_not_answer(home: Path) -> None:
    result = CliRunner().invoke(app, ["up", "--broker", "redis://127.0.0.1:1/0", "--workers", "1"])
    assert result.exit_code == 2
    assert "does not answer" in result.output
    assert not list(home.glob("run/*.pid"))  # nothing was started


def test_down_with_nothing_running(home: Path) -> None:
    result = CliRunner().invoke(app, ["down"])
    assert result.exit_code == 0 and "nothing was running" in result.output


def test_worker_needs_a_broker_and_known_queues(home: Path) -> None:
    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 2 and "no broker" in result.output
    result = CliRunner().invoke(app, ["worker", "--broker", "redis://127.0.0.1:1/0", "--queues", "index"])
    assert result.exit_code == 2 and "unknown queues: index" in result.output
