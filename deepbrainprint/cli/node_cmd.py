"""``deepbrainprint serve``: the storage SCP in the foreground, handing complete series to the worker."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import typer

from deepbrainprint.cli.service_cmds import URL_WITH_PASSWORD


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the app."""
    app.command()(serve)


def serve(
    ae_title: str = typer.Option(None, help="Our AE title (default: settings ae_title, DEEPBRAINPRINT)."),
    port: int = typer.Option(None, help="TCP port (default: settings port, 11112; 0 picks a free one)."),
    bind: str = typer.Option(None, help="Address to listen on (default 127.0.0.1; others need allowed_calling_aes)."),
    allowed_calling_aes: str = typer.Option(None, help="Calling AE titles allowed to connect, comma-separated "
                                                     "('*': any; required when --bind is not loopback)."),
    spool: Path = typer.Option(None, help="Spool folder (default <home>/spool)."),
    quiet_time: float = typer.Option(None, help="Seconds without new instances after release before a series is "
                                               "complete (like Orthanc's StableAge)."),
    broker: str = typer.Option(None, help="Celery broker URL for the worker (default: embedded mode). "
                               + URL_WITH_PASSWORD),
    config: Path = typer.Option(None, help="TOML settings file (also $DBP_CONFIG)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every stored instance (hashed ids only)."),
) -> None:
    """Run the DICOM storage SCP until Ctrl-C or SIGTERM; complete series go to the worker."""
    from deepbrainprint.settings import load_settings
    from deepbrainprint.wiring import storage_node

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines are per-message noise
    settings = load_settings(
        config,
        ae_title=ae_title,
        port=port,
        bind_address=bind,
        allowed_calling_aes=allowed_calling_aes,
        spool_dir=spool,
        quiet_time_s=quiet_time,
        broker_url=broker,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        node = storage_node(settings).start()
    except (ValueError, OSError) as exc:
        typer.echo(f"cannot start the storage SCP: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"listening as {settings.ae_title} on {settings.bind_address}:{node.port}; Ctrl-C stops", err=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
