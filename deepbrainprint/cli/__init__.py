"""The ``deepbrainprint`` command line. Each module registers its own subcommands on the one Typer app."""
