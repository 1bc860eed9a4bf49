"""``deepbrainprint``: the one console command. Each command module registers its subcommands on the one Typer app.

Library commands (no server needed): ``slice_cmd`` (slice), ``model_cmds`` (fingerprint, train, evaluate, quantize),
``cohort_cmd`` (cohort), ``index_cmds`` (enroll, query, calibrate, reindex), ``report_cmds`` (report). Service
commands: ``node_cmd`` (serve) ``service_cmds`` (worker, up, down, demo) and ``dashboard_cmd`` (dashboard). Heavy imports (torch, SimpleITK, pynetdicom) happen inside the
commands so ``--help`` stays fast.
"""

from __future__ import annotations

import typer

from deepbrainprint.cli import (
    cohort_cmd,
    dashboard_cmd,
    index_cmds,
    model_cmds,
    node_cmd,
    report_cmds,
    service_cmds,
    slice_cmd,
)

app = typer.Typer(
    name="deepbrainprint",
    help="Recognise whose brain a T1 MRI shows: slice, fingerprint, index and verdicts for DICOM series.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _module in (slice_cmd, model_cmds, cohort_cmd, index_cmds, report_cmds, node_cmd, service_cmds, dashboard_cmd):
    _module.register(app)


@app.command()
def version() -> None:
    """Print the package version and the shipped model version."""
    from deepbrainprint import __version__

    typer.echo(f"deepbrainprint {__version__}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
