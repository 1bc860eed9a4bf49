"""``deepbrainprint worker | up | down | demo``: the worker process, the one-host service, and the demo.

Heavy imports (Celery, torch, pynetdicom) happen inside the commands so ``deepbrainprint --help`` stays fast.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

QUEUE_NAMES = ("fingerprint", "writeback")

#: Said wherever an option takes a URL: a command line is visible to every user of the host (ps, /proc).
URL_WITH_PASSWORD = "A URL with a password belongs in DBP_BROKER_URL or DBP_BROKER_URL_FILE, never on the command line."


def register(app: typer.Typer) -> None:
    """Add this module's subcommands to the app."""
    app.command("worker")(worker)
    app.command("up")(up)
    app.command("down")(down)
    app.command("demo")(demo)


def worker(
    broker: str = typer.Option(None, help="Celery broker URL (default: settings broker_url, $DBP_BROKER_URL). "
                               + URL_WITH_PASSWORD),
    queues: str = typer.Option("fingerprint,writeback", help="Comma-separated: fingerprint, writeback."),
    concurrency: int = typer.Option(1, help="Worker processes (prefork) or threads."),
    pool: str = typer.Option("prefork", help="Celery pool: prefork, solo, threads."),
    name: str = typer.Option(None, help="Celery node name (default celery@<host>)."),
    loglevel: str = typer.Option("INFO", help="Log level."),
    config: Path = typer.Option(None, help="TOML settings file (also $DBP_CONFIG)."),
) -> None:
    """Run a Celery worker that fingerprints series and writes verdicts back (service and scaled-out modes)."""
    from deepbrainprint.settings import load_settings
    from worker.celery_app import configure, fingerprint_queue, writeback_queue

    settings = load_settings(config, broker_url=broker)
    if not settings.broker_url:
        typer.echo("no broker: set --broker or broker_url (embedded mode needs no worker process)", err=True)
        raise typer.Exit(2)
    chosen = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = set(chosen) - set(QUEUE_NAMES)
    if unknown:
        typer.echo(f"unknown queues: {', '.join(sorted(unknown))} (known: {', '.join(QUEUE_NAMES)})", err=True)
        raise typer.Exit(2)
    config = settings.worker_config()
    names = {"fingerprint": fingerprint_queue(config), "writeback": writeback_queue(config)}
    app = configure(config)
    import worker.tasks  # noqa: F401 - registers the tasks

    argv = ["worker", "-Q", ",".join(names[q] for q in chosen), "-c", str(concurrency), "-P", pool,
            "-l", loglevel, "--without-gossip", "--without-mingle"]
    if name:
        argv += ["-n", name]
    app.worker_main(argv=argv)


def up(
    workers: int = typer.Option(2, help="Celery worker processes to start (each one --concurrency wide)."),
    concurrency: int = typer.Option(1, help="Pool size of each worker."),
    pool: str = typer.Option("prefork", help="Celery pool of each worker."),
    with_orthanc: bool = typer.Option(False, "--with-orthanc", help="Also start a real Orthanc that forwards "
                                      "stable MR series to the SCP and receives the verdicts."),
    orthanc_http_port: int = typer.Option(8042, help="Orthanc REST port (127.0.0.1 only)."),
    orthanc_dicom_port: int = typer.Option(4242, help="Orthanc DICOM port."),
    orthanc_stable_age: int = typer.Option(5, help="Orthanc StableAge: seconds before a series is forwarded."),
    broker: str = typer.Option(None, help="Celery broker URL (default: settings broker_url or local Redis). "
                               + URL_WITH_PASSWORD),
    port: int = typer.Option(None, help="SCP port (default: settings port)."),
    config: Path = typer.Option(None, help="TOML settings file (also $DBP_CONFIG)."),
) -> None:
    """Start the service on this host in the background: SCP + Celery workers (+ Orthanc). Stop with `down`."""
    from deepbrainprint import supervisor as service
    from deepbrainprint.settings import load_settings

    settings = load_settings(config, broker_url=broker, port=port)
    settings.broker_url = settings.broker_url or "redis://127.0.0.1:6379/0"
    try:
        started = service.up(
            settings, workers=workers, concurrency=concurrency, pool=pool, with_orthanc=with_orthanc,
            orthanc_http_port=orthanc_http_port, orthanc_dicom_port=orthanc_dicom_port,
            orthanc_stable_age_s=orthanc_stable_age,
        )
    except (RuntimeError, OSError) as error:
        typer.echo(f"cannot start: {error}", err=True)
        raise typer.Exit(2) from None
    layout = service.ServiceLayout.for_settings(settings)
    for name, pid in started.items():
        typer.echo(f"{name:10s} pid {pid:>7d}  log {layout.log_file(name)}")
    typer.echo(f"SCP {settings.ae_title} on port {settings.port}; broker {settings.broker_url.split('@')[-1]}")
    if "dashboard" in started:
        typer.echo(f"dashboard http://127.0.0.1:{settings.dashboard_port}/ (log in as a user of dashboard_users)")
    if with_orthanc:
        typer.echo(f"Orthanc {settings.orthanc_url} (user {settings.orthanc_username}; password in "
                   f"{layout.orthanc_dir / 'orthanc.json'})")


def down(config: Path = typer.Option(None, help="TOML settings file (also $DBP_CONFIG).")) -> None:
    """Stop what `up` started (workers finish the series in hand; nothing queued is lost)."""
    from deepbrainprint import supervisor as service
    from deepbrainprint.settings import load_settings

    stopped = service.down(load_settings(config))
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def demo(
    home: Path = typer.Option(None, help="Where the demo keeps its archive (default: a new temporary folder)."),
    quick: bool = typer.Option(False, help="Fewer series (the planted duplicate and mismatch only)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the worker's log."),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object per series (planted label, expected and actual verdict) on stdout."
    ),
) -> None:
    """Embedded mode on real heads: make DICOM series, send them to an in-process SCP over a real association,
    print the verdicts, including a planted duplicate and a planted identity mismatch."""
    import json

    from deepbrainprint.demo import run_demo

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if as_json:
        status = run_demo(home=home, quick=quick, echo=lambda _line: None,
                          on_result=lambda row: typer.echo(json.dumps(row)))
    else:
        status = run_demo(home=home, quick=quick, echo=typer.echo)
    raise typer.Exit(status)
