"""``enroll``, ``query``, ``calibrate``, ``reindex``: the identity archive from the command line.

Every command takes ``--index DIR`` (or the configured ``index_dir``), so several archives live side by side, and
``--json`` for scripts (one JSON object per line). Exit codes say what happened, so scripts need not parse output:

* 0: done, nothing to look at (``consistent`` / ``new_patient`` only)
* 1: an unexpected error on at least one series (the others were still processed)
* 2: usage error
* 3: at least one series ``rejected`` (and no alarm)
* 4: at least one alarm: ``identity_mismatch``, ``possible_duplicate`` or ``needs_review``
* 5: no DICOM series found where one was expected
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from deepbrainprint.cli.labels import ShowPathsOption, series_label

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REJECTED = 3
EXIT_ALARM = 4
EXIT_NOTHING_FOUND = 5
ALARMS = {"identity_mismatch", "possible_duplicate", "needs_review"}
EXIT_CODES_HELP = (
    "Exit codes: 0 ok (consistent / new_patient only), 1 error on a series, 2 usage, 3 a series rejected, "
    "4 alarm (identity_mismatch, possible_duplicate or needs_review), 5 no DICOM series found."
)

IndexOption = Annotated[
    Optional[Path], typer.Option("--index", help="Archive folder (store, FAISS index, keys); default from config.")
]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file (else $DBP_CONFIG).")]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per series on stdout.")]
ModelOption = Annotated[Optional[Path], typer.Option("--model", help="Model weights (default: the shipped ones).")]


@dataclass
class SeriesSource:
    """One series to process: where it is (shown only with --show-paths), how to load it, where it came from, and
    the label the output names it by (:func:`label_sources`)."""

    series_dir: str
    load: Callable[[], Any]
    series_instance_uid: str = ""
    source_info: dict[str, Any] = field(default_factory=dict)
    label: str = ""


def label_sources(sources: list[SeriesSource]) -> list[SeriesSource]:
    """Give each series the label the output names it by (:func:`deepbrainprint.cli.labels.series_label`), numbered
    among the series this run found. Never the folder: its name may carry a patient's (``DOE^JOHN_12345/t1``)."""
    for position, source in enumerate(sources, start=1):
        source.label = series_label(position, len(sources), source.series_instance_uid,
                                    str(source.source_info.get("orthanc_id") or ""))
    return sources


def folder_sources(path: Path) -> list[SeriesSource]:
    """The image series below a folder: the folder itself when it holds one series, else one entry per series."""
    from fingerprint.imaging.dicom_read import find_series, iter_files, read_dicom_file

    shown = str(path)
    groups = find_series(path)
    if not groups and not any(read_dicom_file(p, stop_before_pixels=True) for p in iter_files(path)):
        return []  # nothing DICOM at all: nothing to record
    if len(groups) <= 1:  # one series (or none: the archive then records why it was rejected)
        uid = next(iter(groups), "")
        return [SeriesSource(shown, lambda: path, uid, {"folder": shown})]
    sources = []
    for uid, files in sorted(groups.items()):
        parent = Path(*_common_parts([f.parent for f in files]))
        if set(iter_files(parent)) == set(files):  # the series has a folder of its own
            sources.append(SeriesSource(str(parent), lambda p=parent: p, uid, {"folder": str(parent)}))
        else:
            load = lambda fs=files: [ds for ds in (read_dicom_file(f) for f in fs) if ds is not None]  # noqa: E731
            sources.append(SeriesSource(f"{shown}#{uid}", load, uid, {"folder": shown}))
    return sources


def _common_parts(folders: list[Path]) -> tuple[str, ...]:
    parts = folders[0].parts
    for folder in folders[1:]:
        common = 0
        for a, b in zip(parts, folder.parts):
            if a != b:
                break
            common += 1
        parts = parts[:common]
    return parts


def orthanc_sources(url: str, username: str, password: str) -> list[SeriesSource]:
    """Every series stored in an Orthanc server, loaded over its REST API (credentials from the settings)."""
    from dbp_orthanc.series_reader import orthanc_series

    return [
        SeriesSource(f"orthanc:{s.orthanc_id}", s.load, s.series_instance_uid, {"orthanc_id": s.orthanc_id, "orthanc_url": url})
        for s in orthanc_series(url, username, password)
    ]


def _settings(config: Path | None, index: Path | None, **overrides: Any):
    from deepbrainprint.settings import load_settings

    return load_settings(config, index_dir=index, **overrides)


def without_other_sources(value: Any, top: bool = True) -> Any:
    """``value`` less every ``source`` record below the top level: the neighbours and verified scans of a verdict carry the
    folders *other* series were enrolled from, and folder names often carry a patient's name (``DOE^JOHN_12345``).
    The series' own ``source`` stays (its folder only with --show-paths, see :func:`_shown`).
    Neighbours remain findable by their ``row_id`` and ``series_instance_uid``."""
    if isinstance(value, dict):
        return {k: without_other_sources(v, False) for k, v in value.items()
                if top or k != "source" or not isinstance(v, dict)}  # a thresholds' "source" is a word, kept
    if isinstance(value, list):
        return [without_other_sources(v, False) for v in value]
    return value


def _shown(out: dict[str, Any], show_paths: bool) -> dict[str, Any]:
    """What is printed of a series' result: no other series' sources, and no folder of its own unless asked."""
    out = without_other_sources(out)
    if not show_paths:
        out.pop("series_dir", None)
        if isinstance(out.get("source"), dict):
            out["source"] = {k: v for k, v in out["source"].items() if k != "folder"}
    return out


def _emit(out: dict[str, Any], as_json: bool, show_paths: bool) -> None:
    out = _shown(out, show_paths)
    if as_json:
        typer.echo(json.dumps(out, default=str))
        return
    score = "-" if out.get("score") is None else f"{out['score']:.4f}"
    extra = out.get("matched_patient_id_hash") or out.get("rejected") or ""
    where = f"  {out['series_dir']}" if show_paths else ""
    typer.echo(f"{out['verdict']:<18} {score:>7}  {out['series']}{where}  {extra}".rstrip())


def _exit_code(verdicts: Counter, errors: int) -> int:
    if errors:
        return EXIT_ERROR
    if any(verdicts[v] for v in ALARMS):
        return EXIT_ALARM
    if verdicts["rejected"]:
        return EXIT_REJECTED
    return EXIT_OK


def _run_series(
    archive: Any, sources: list[SeriesSource], record: bool, as_json: bool, progress: Any, show_paths: bool = False
) -> tuple:
    """Process each series; one failure never stops the others. Returns (verdict counts, errors)."""
    verdicts: Counter = Counter()
    errors = 0
    for source in sources:
        try:
            out = archive.process(source.load(), source.source_info, record=record)
        except Exception as exc:  # noqa: BLE001 - report, keep going
            errors += 1
            # The message only with --show-paths: a file error's message quotes the path (a patient's name in it).
            reason = f"{type(exc).__name__}: {exc}" if show_paths else type(exc).__name__
            err = {"series": source.label, "series_dir": source.series_dir, "verdict": None, "error": reason}
            err = _shown(err, show_paths)
            typer.echo(json.dumps(err) if as_json else f"error: {source.label}: {reason}", err=not as_json)
        else:
            out = {"series": source.label, "series_dir": source.series_dir, **out}
            verdicts[out["verdict"]] += 1
            if progress is not None:
                progress.clear()
            _emit(out, as_json, show_paths)
        if progress is not None:
            progress.update(1)
    return verdicts, errors


def enroll(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Folders of DICOM (each series found inside).")] = None,
    orthanc: Annotated[Optional[str], typer.Option("--orthanc", help="Enroll every series of this Orthanc.")] = None,
    index: IndexOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    as_json: JsonOption = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
    show_paths: ShowPathsOption = False,
) -> None:
    """Fingerprint and record series in bulk, with a verdict for each. Resumable: series already recorded for this
    model version are skipped. Credentials for --orthanc come from the settings (orthanc_username/password).
    Each series is named by a label, not by its folder (folder names often carry patients' names): N/TOTAL, its
    place among the series found, and series:<12 hex>, the start of the hash of its SeriesInstanceUID that the spool
    and the worker use (orthanc:<id> for a series read from Orthanc). JSON fields: series (the label), verdict,
    score, series_instance_uid, matched_patient_id_hash, neighbours, evidence; series_dir and source.folder only
    with --show-paths."""
    from tqdm import tqdm

    from fingerprint.identity.archive import Archive

    if not paths and not orthanc:
        raise typer.BadParameter("give at least one PATH or --orthanc URL")
    settings = _settings(config, index, model_path=model)
    sources: list[SeriesSource] = []
    for number, path in enumerate(paths or [], start=1):
        if not path.exists():
            raise typer.BadParameter(_missing(path, number, show_paths))
        sources.extend(folder_sources(path))
    if orthanc:
        sources.extend(orthanc_sources(orthanc, settings.orthanc_username, settings.orthanc_password))
    label_sources(sources)  # numbered among all series found, so a resumed run names each series as before
    with Archive(settings.archive_config()) as archive:
        done = archive.store.recorded_series_uids(archive.model_version)
        todo = [s for s in sources if not (s.series_instance_uid and s.series_instance_uid in done)]
        skipped = len(sources) - len(todo)
        bar = tqdm(total=len(todo), desc="enroll", unit="series", disable=not progress, file=sys.stderr)
        verdicts, errors = _run_series(archive, todo, True, as_json, bar, show_paths)
        bar.close()
    summary = ", ".join(f"{v}: {n}" for v, n in sorted(verdicts.items())) or "nothing new"
    typer.echo(f"enrolled {sum(verdicts.values())} series ({summary}); {skipped} already recorded; "
               f"{errors} error(s)", err=True)
    if not sources:
        raise typer.Exit(EXIT_NOTHING_FOUND)
    raise typer.Exit(_exit_code(verdicts, errors))


def query(
    path: Annotated[Path, typer.Argument(help="A DICOM series folder (or a folder of series: each is queried).")],
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Neighbours to show (default from config).")] = None,
    record: Annotated[bool, typer.Option("--record", help="Also record the series (default: look only).")] = False,
    index: IndexOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    as_json: JsonOption = False,
    show_paths: ShowPathsOption = False,
) -> None:
    """Top-k most similar archived series with their similarities, and the verdict this series would get.
    Each series is named by a label, not by its folder (folder names often carry patients' names): N/TOTAL, its
    place among the series found in PATH, and series:<12 hex>, the start of the hash of its SeriesInstanceUID that
    the spool and the worker use. JSON fields: series (the label), verdict, score, series_instance_uid, neighbours,
    matched_patient_id_hash, evidence; series_dir and source.folder only with --show-paths."""
    from fingerprint.identity.archive import Archive

    if not path.exists():
        raise typer.BadParameter(_missing(path, 1, show_paths))
    settings = _settings(config, index, model_path=model, top_k=top_k)
    sources = label_sources(folder_sources(path))
    if not sources:
        typer.echo(f"no DICOM found in {path if show_paths else 'PATH'}", err=True)
        raise typer.Exit(EXIT_NOTHING_FOUND)
    with Archive(settings.archive_config()) as archive:
        verdicts, errors = _run_series(archive, sources, record, as_json, None, show_paths)
        if not as_json:
            _print_neighbours_hint(verdicts)
    raise typer.Exit(_exit_code(verdicts, errors))


def _missing(path: Path, number: int, show_paths: bool) -> str:
    """The usage error for a PATH that does not exist, naming it only with --show-paths."""
    return f"{path} does not exist" if show_paths else f"PATH {number} does not exist (--show-paths names it)"


def _print_neighbours_hint(verdicts: Counter) -> None:
    if sum(verdicts.values()):
        typer.echo("(use --json for the neighbours, their similarities and the thresholds)", err=True)


def calibrate(
    cohort: Annotated[
        Optional[Path], typer.Option("--cohort", help="Labelled set: cohort.csv + slices.npz or volumes.")
    ] = None,
    from_archive: Annotated[
        bool,
        typer.Option(
            "--from-archive",
            help="Calibrate on the archive itself: series that share a PatientID as the same person, the others as "
            "different people, label errors set aside (the site's own scanners and patients).",
        ),
    ] = False,
    far: Annotated[Optional[float], typer.Option("--far", help="False-alarm rate (default 0.001 = 0.1%).")] = None,
    split: Annotated[str, typer.Option("--split", help="Rows of this split, if the cohort has it.")] = "calibration",
    ship: Annotated[bool, typer.Option("--ship", help="Write next to the shipped weights, not in the index.")] = False,
    index: IndexOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    real_heads: Annotated[
        bool,
        typer.Option(
            "--real-heads",
            help="The cohort holds real people (cohort generate --kind real-calibration): calibrate the "
            "verification stage too, from every pair of its scans.",
        ),
    ] = False,
    fingerprint_only: Annotated[
        bool,
        typer.Option(
            "--fingerprint-only",
            help="With --real-heads: the fingerprint's thresholds only, no pair verified (e.g. for the int8 model "
            "version: DBP_MODEL_RUNTIME=int8; the verification's do not depend on how fingerprints are computed).",
        ),
    ] = False,
    workers: Annotated[int, typer.Option("--workers", help="Processes for slicing and pair checks.")] = 1,
    as_json: JsonOption = False,
) -> None:
    """Measure same-person and different-person similarities on a labelled cohort, or with --from-archive on the
    archive's own series, and store the verdict thresholds for the model version in use (and, with --real-heads or
    --from-archive, for the verification method) in the archive's store and index folder, or with --ship in
    fingerprint/weights/thresholds.json, shipped with the weights. Exit codes: 0 calibrated; 2 bad arguments; 6 the
    archive holds too few repeat patients for the rate asked (the message says how many more it needs)."""
    from fingerprint.identity.calibration import (
        SHIPPED_THRESHOLDS,
        calibrate_cohort,
        site_thresholds_path,
    )
    from fingerprint.model.fingerprinter import load_model

    settings = _settings(config, index, model_path=model)
    if from_archive:
        if cohort is not None or ship:
            raise typer.BadParameter("--from-archive calibrates the archive in --index: no --cohort, no --ship")
        _calibrate_archive(settings, far if far is not None else settings.calibration_far, workers, as_json)
        return
    if cohort is None or not (cohort / "cohort.csv").exists():
        raise typer.BadParameter(f"{cohort}/cohort.csv not found (or use --from-archive)")
    if fingerprint_only and not real_heads:
        raise typer.BadParameter("--fingerprint-only goes with --real-heads (without it nothing is verified anyway)")
    fingerprinter = load_model(settings.model_path, runtime=settings.model_runtime)
    rate = far if far is not None else settings.calibration_far
    if real_heads:
        from fingerprint.evaluation.real_calibration import calibrate_real_cohort

        calibrated = [t for t in calibrate_real_cohort(cohort, fingerprinter, rate, split, workers, not fingerprint_only)
                      if t is not None]
    else:
        calibrated = [calibrate_cohort(cohort, fingerprinter.embed, fingerprinter.model_version, rate, split)]
    target = SHIPPED_THRESHOLDS if ship else site_thresholds_path(settings.resolved_index_dir)

    def line(t: Any) -> str:
        d = t.details
        return (
            f"{t.model_version}: match >= {t.match:.4f}, mismatch < {t.mismatch:.4f} (far {rate:g}; {d['same_pairs']} "
            f"same-person / {d['different_pairs']} different-person pairs; same person below match: "
            f"{d['same_below_match']:.2%}) -> {target}"
        )

    _keep_and_report(calibrated, target, settings, not ship, as_json, line)


def _keep_and_report(
    calibrated: list[Any], target: Path, settings: Any, in_store: bool, as_json: bool, line: Any
) -> None:
    """Keep each calibration (file, and the store for a site's own) and print it: JSON, or ``line(thresholds)``."""
    for thresholds in calibrated:
        _keep_thresholds(thresholds, target, settings, in_store=in_store)
        if as_json:
            typer.echo(json.dumps({**thresholds.as_json(), "file": str(target)}))
        else:
            typer.echo(line(thresholds))
        if "warning" in thresholds.details:
            typer.echo(f"warning: {thresholds.details['warning']}", err=True)


def _calibrate_archive(settings: Any, far: float, workers: int, as_json: bool) -> None:
    """``calibrate --from-archive``: fit both thresholds on the archive, keep them, their report and their plot."""
    from fingerprint.identity.archive import Archive
    from fingerprint.identity.calibration import site_thresholds_path
    from fingerprint.identity.site_calibration import (
        NotEnoughRepeats,
        calibrate_from_archive,
    )
    from fingerprint.identity.verification import METHOD_VERSION

    config = settings.archive_config()
    site = settings.site_name or config.index_dir.name
    with Archive(config) as archive:
        try:
            result = calibrate_from_archive(
                archive.store, archive.model_version, far, METHOD_VERSION if config.verification else None,
                workers, site,
            )
        except NotEnoughRepeats as refusal:
            if as_json:
                typer.echo(json.dumps({"calibrated": False, "reason": str(refusal), "needed_pairs": refusal.needed_pairs,
                                       "counted_pairs": refusal.counted_pairs, "more_patients": refusal.more_patients}))
            typer.echo(str(refusal), err=True)
            raise typer.Exit(6) from None
    plot = config.index_dir / f"calibration-{result.fingerprint.model_version}.png"
    plot.write_bytes(result.plot_png)
    target = site_thresholds_path(config.index_dir)
    calibrated = [t for t in (result.fingerprint, result.verification) if t is not None]
    for thresholds in calibrated:
        thresholds.details["plot"] = str(plot)

    def line(t: Any) -> str:
        d = t.details
        return (
            f"{t.model_version} ({d['score']}, site {site}): match >= {t.match:.4f}, mismatch < {t.mismatch:.4f} "
            f"(far {far:g}; {d['same_pairs']} same-PatientID / {d['different_pairs']} different-PatientID pairs; "
            f"{d.get('same_label_pairs_set_aside', 0)} same-PatientID pairs set aside as label errors) -> store and "
            f"{target}; plot {plot}"
        )

    _keep_and_report(calibrated, target, settings, True, as_json, line)


def _keep_thresholds(thresholds: Any, target: Path, settings: Any, in_store: bool) -> None:
    """Write thresholds to ``target`` and, for a site's own calibration, to the store (every worker of the archive
    then uses them, whatever its index folder)."""
    from fingerprint.identity.calibration import save_thresholds

    save_thresholds(thresholds, target)
    if in_store:
        from fingerprint.identity.store import Store

        store = Store(settings.resolved_store_url)
        store.save_thresholds(thresholds.model_version, thresholds.as_json())
        store.close()


def reindex(
    from_version: Annotated[
        Optional[str], typer.Option("--from", help="Model version to re-embed (default: the largest other one).")
    ] = None,
    index: IndexOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Slices embedded per batch.")] = 64,
    as_json: JsonOption = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
) -> None:
    """Re-embed the archive with the model in use (a new model version means new fingerprints), from the stored
    canonical slices: no DICOM needed. Resumable; each series gets the new model's verdict, in the original order."""
    from tqdm import tqdm

    from fingerprint.identity.archive import Archive, reindex_archive

    settings = _settings(config, index, model_path=model)
    with Archive(settings.archive_config()) as archive:
        target = archive.model_version
        versions = {v: n for v, n in archive.store.model_versions().items() if v != target}
        source = from_version or (max(versions, key=versions.get) if versions else None)
        if source is None or source not in versions:
            typer.echo(f"nothing to reindex: no series of another model version than {target}", err=True)
            raise typer.Exit(EXIT_NOTHING_FOUND)
        bar = tqdm(total=versions[source], desc=f"reindex {source} -> {target}", disable=not progress, file=sys.stderr)
        counts = reindex_archive(archive, source, batch_size, bar)
        bar.close()
    out = {"from": source, "to": target, **counts}
    typer.echo(json.dumps(out) if as_json else ", ".join(f"{k}: {v}" for k, v in out.items()))


def register(app: typer.Typer) -> None:
    """Add this module's subcommands to the app."""
    for command in (enroll, query, calibrate, reindex):
        app.command(command.__name__, epilog=EXIT_CODES_HELP)(command)
    app.command("erase")(erase)


def erase(
    index: IndexOption = None,
    config: ConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Right to erasure: delete one patient's fingerprints, slices, canonical brains, verifications, verdicts and
    flag reviews from the store, the index files that held their vectors, their worker jobs and their files in the
    spool. The PatientID is asked for on the terminal (or read from stdin), never taken from the command line, so it
    shows in no process list or shell history. Run it with the service stopped. Exit codes: 0 erased; 1 no such
    patient; 2 not confirmed."""
    from dicom_node.spool import Spool, series_key_for
    from fingerprint.identity.archive import Archive
    from fingerprint.identity.erasure import erase_patient
    from fingerprint.identity.reviews import record_event
    from worker.ledger import Ledger

    settings = _settings(config, index)
    patient_id = typer.prompt("PatientID to erase", hide_input=True).strip()
    if not yes and not typer.confirm("Erase everything of this patient?", default=False):
        raise typer.Exit(2)
    archive_config = settings.archive_config()
    with Archive(archive_config, model=object()) as archive:
        patient_hash = archive.hash_patient_id(patient_id)
        erased = erase_patient(archive.store, archive_config.index_dir, patient_hash)
        if not erased["series"]:
            typer.echo("no series of that patient in this archive", err=True)
            raise typer.Exit(1)
        record_event(archive.store, "cli", "erasure", "patient",
                     {"series": erased["series"], "verifications": erased["verifications"]})
        keys = [series_key_for(uid) for uid in erased["series_instance_uids"]]
        ledger = Ledger(archive_config.store_url)
        try:
            jobs = ledger.erase_series(keys, patient_hash, set(erased["series_instance_uids"]))
        finally:
            ledger.close()
        spooled = sum(Spool(settings.resolved_spool_dir).erase(key) for key in keys)
        archive.store.compact()  # last: no deleted row left in the database file either
    typer.echo(json.dumps({"series": erased["series"], "verifications": erased["verifications"],
                           "brains": erased["brains"], "index_files_rebuilt": len(erased["index_files_removed"]),
                           "worker_jobs": jobs, "spooled_series": spooled}))
