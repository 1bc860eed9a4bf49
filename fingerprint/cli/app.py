"""``deepbrainprint``: the one console command. Subcommands live next to the code they drive.

Library commands (no server needed) come from ``fingerprint.cli.*``; service commands from ``dicom_node.cli`` and
``worker.cli``. Heavy imports (torch, SimpleITK, pynetdicom) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="deepbrainprint",
    help="Recognise whose brain a T1 MRI shows: slice, fingerprint, index and verdicts for DICOM series.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = [
    "fingerprint.cli.slice_cmd",  # slice
    "fingerprint.cli.model_cmds",  # fingerprint, train, evaluate
    "fingerprint.cli.cohort_cmd",  # cohort
    "fingerprint.cli.index_cmds",  # enroll, query, calibrate, reindex
    "dicom_node.cli",  # serve
    "worker.cli",  # worker, up, down, demo
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


@app.command()
def version() -> None:
    """Print the package version and the shipped model version."""
    from fingerprint import __version__

    typer.echo(f"deepbrainprint {__version__}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
