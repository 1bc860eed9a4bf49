"""``deepbrainprint dashboard``: the web dashboard (flags, evidence, acknowledgement), and password hashes for it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Optional

import typer

KEY_FILE = "dashboard.key"


def register(app: typer.Typer) -> None:
    """Add ``dashboard`` to the app."""
    app.command()(dashboard)


def dashboard(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (default 127.0.0.1: this host only).")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option("--port", help="TCP port (default: settings dashboard_port, 8080).")] = None,
    index: Annotated[Optional[Path], typer.Option("--index", help="Archive folder (default: settings index_dir).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML settings file (also $DBP_CONFIG).")] = None,
    hash_password: Annotated[bool, typer.Option("--hash-password", help="Ask for a password and print the hash to put in dashboard_users (NAME:HASH), then exit.")] = False,
) -> None:
    """Serve the dashboard: the archive's flags with filters, each flag's evidence pictures, acknowledgement, and a
    link to the study in Orthanc's viewer. Login required (users in dashboard_users); sessions expire; forms are
    CSRF-protected; URLs carry no patient identifiers."""
    from werkzeug.security import generate_password_hash

    if hash_password:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        typer.echo(generate_password_hash(password))
        return
    from deepbrainprint.dashboard.app import DashboardConfig, create_app, parse_users
    from deepbrainprint.settings import load_settings
    from fingerprint.model.fingerprinter import load_model

    settings = load_settings(config, index_dir=index)
    users = parse_users(settings.dashboard_users)
    if not users:
        typer.echo("no dashboard users: set dashboard_users (NAME:HASH, see --hash-password)", err=True)
        raise typer.Exit(2)
    app = create_app(DashboardConfig(
        store_url=settings.resolved_store_url, users=users, secret_key=secret_key(settings),
        session_minutes=settings.dashboard_session_minutes, orthanc_url=settings.orthanc_url,
        orthanc_username=settings.orthanc_username, orthanc_password=settings.orthanc_password,
        model=load_model(settings.model_path), ledger_url=settings.resolved_store_url,
        spool_dir=settings.resolved_spool_dir,
    ))
    from werkzeug.serving import run_simple

    run_simple(host, port or settings.dashboard_port, app, threaded=True)


def secret_key(settings) -> bytes:  # noqa: ANN001 - the application's Settings
    """The session-signing key: from the settings, else a random one kept in <home>/dashboard.key (0600)."""
    if settings.dashboard_secret_key:
        return settings.dashboard_secret_key.encode()
    path = Path(settings.home) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
