"""``deepbrainprint slice``: one DICOM series folder -> its canonical axial slice (PNG) and a JSON account."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

#: Exit codes of ``slice`` (also listed in its --help).
EXIT_OK = 0
EXIT_USAGE = 2  # Typer/Click: bad arguments
EXIT_REJECTED = 3  # the series is not a usable T1 brain volume; the reason is printed


def register(app: typer.Typer) -> None:
    """Add the ``slice`` subcommand to the app."""
    app.command(
        name="slice",
        help=(
            "Cut the canonical axial slice out of one DICOM series (a folder, searched recursively; .dcm.gz too). "
            "The slice is 128 x 128 pixels of 1.5 mm at MNI z = +18 mm (lateral ventricles) after a rigid alignment "
            "to the MNI152 brain, rows anterior->posterior, columns patient right->left. "
            "Exit codes: 0 = slice written; 2 = bad arguments; 3 = series rejected (with --json the output is "
            '{"rejected": CODE, "detail": ...}).'
        ),
    )(slice_command)


def slice_command(
    series_dir: Path = typer.Argument(..., exists=True, help="Folder (or file) holding one DICOM series."),
    png: Path | None = typer.Option(None, "--png", help="Write the slice here as an 8-bit greyscale PNG."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a human summary."),
    method: str = typer.Option("anatomical", "--method", help="anatomical (default) or middle (the paper's protocol)."),
) -> None:
    from fingerprint.errors import SeriesRejected
    from fingerprint.imaging.pipeline import METHODS, slice_series

    if method not in METHODS:
        raise typer.BadParameter(f"use one of: {', '.join(METHODS)}", param_hint="--method")
    try:
        result = slice_series(series_dir, method=method)
    except SeriesRejected as rejected:
        if as_json:
            typer.echo(json.dumps(rejected.as_json()))
        else:
            typer.echo(f"rejected ({rejected.reason.value}): {rejected.detail}", err=True)
        raise typer.Exit(EXIT_REJECTED) from None
    if png is not None:
        write_png(result.pixels, png)
    report = {
        "series": result.identifiers.as_json(include_patient_id=False),
        "method": result.method,
        "geometry": result.geometry,
        "slice": {
            "size": list(result.pixels.shape),
            "spacing_mm": result.geometry["output"]["spacing_mm"],
            "png": str(png) if png is not None else None,
        },
    }
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(human_summary(report))


def write_png(pixels: Any, path: Path) -> None:
    """Save a [0, 1] float slice as an 8-bit greyscale PNG (rows and columns as in the array)."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8), mode="L").save(path)


def human_summary(report: dict[str, Any]) -> str:
    """A few lines for people: what was read, how the level was found, where the PNG went."""
    geometry = report["geometry"]
    source = geometry["input"]
    lines = [
        f"series {report['series']['series_instance_uid']} ({report['series']['series_description'] or 'no description'})",
        f"volume {source['size']} voxels of {source['spacing_mm']} mm, {source['acquisition_plane']} acquisition",
        f"level: {geometry['level']['how']}",
    ]
    if "alignment" in geometry:
        alignment = geometry["alignment"]
        lines.append(
            f"alignment: rotation {alignment['rotation_deg']} deg, translation {alignment['translation_mm']} mm, "
            f"MI {alignment['metric_value']}"
        )
    lines.append(f"slice {report['slice']['size']} px of {report['slice']['spacing_mm']} mm -> {report['slice']['png'] or '(no PNG)'}")
    return "\n".join(lines)
