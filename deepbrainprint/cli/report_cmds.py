"""``deepbrainprint report flags | ack | audit``: the mislabeled-study report, acknowledging flags, the audit log."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

report_app = typer.Typer(help="Reports: the flags of the archive with their evidence; acknowledging them.",
                         no_args_is_help=True)

IndexOption = Annotated[Optional[Path], typer.Option("--index", help="Archive folder (default: settings index_dir).")]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file (also $DBP_CONFIG).")]


def register(app: typer.Typer) -> None:
    """Add ``report`` and its subcommands to the app."""
    app.add_typer(report_app, name="report")


def _store(config: Path | None, index: Path | None):  # noqa: ANN202 - a Store, imported lazily
    from deepbrainprint.settings import load_settings
    from fingerprint.identity.store import Store

    return Store(load_settings(config, index_dir=index).resolved_store_url)


@report_app.command("flags")
def flags(
    out: Annotated[Path, typer.Option("--out", help="Folder for flags.html, flags.csv and flags.json.")] = Path("reports"),
    since: Annotated[Optional[str], typer.Option("--since", help="Only flags recorded on or after this day (YYYY-MM-DD, UTC).")] = None,
    state: Annotated[Optional[str], typer.Option("--state", help="Only flags in this review state: open, resolved, false_alarm.")] = None,
    index: IndexOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the flags as JSON lines (no pictures) too.")] = False,
) -> None:
    """Every identity_mismatch, possible_duplicate and needs_review verdict, newest first: study identifiers, the
    PatientIDs involved (hashed unless the site keeps clear IDs), scores, evidence pictures, what to do next, and
    the review state. Writes a self-contained HTML page plus CSV and JSON, and prints a summary line."""
    from fingerprint.identity.reviews import STATES, record_event
    from fingerprint.reports.flags import collect_flags
    from fingerprint.reports.render import summary_line, write_flags_report

    if state is not None and state not in STATES:
        raise typer.BadParameter(f"--state must be one of {', '.join(STATES)}")
    try:
        day = date.fromisoformat(since) if since else None
    except ValueError:
        raise typer.BadParameter("--since must be a day, YYYY-MM-DD") from None
    from deepbrainprint.settings import load_settings
    from fingerprint.model.fingerprinter import load_model

    model = load_model(load_settings(config, index_dir=index).model_path)  # for the saliency maps
    store = _store(config, index)
    try:
        found = collect_flags(store, since=day, state=state, model=model)
        paths = write_flags_report(found, out)
        record_event(store, "cli", "report: flags", "report", {"flags": len(found), "since": since, "state": state})
    finally:
        store.close()
    if as_json:
        for flag in found:
            typer.echo(json.dumps(flag.as_json()))
    typer.echo(f"{summary_line(found)} -> {paths['html']} (+ .csv, .json)", err=as_json)


@report_app.command("ack")
def ack(
    flag: Annotated[str, typer.Argument(help="The flag, as the report names it (F<number>).")],
    state: Annotated[str, typer.Option("--state", help="resolved, false_alarm, or open (to reopen).")],
    by: Annotated[str, typer.Option("--by", help="Who decided (kept in the audit log).")],
    comment: Annotated[str, typer.Option("--comment", help="What was found or done.")] = "",
    index: IndexOption = None,
    config: ConfigOption = None,
) -> None:
    """Acknowledge a flag: resolved (the records were fixed), false_alarm (nothing was wrong), or open again. The
    state is stored and shown in the report; every change goes to the audit log. Exit 2 for an unknown flag."""
    from fingerprint.identity.reviews import set_review

    store = _store(config, index)
    try:
        review = set_review(store, flag, state, comment, by)
    except (ValueError, KeyError) as error:
        typer.echo(str(error).strip("'\""), err=True)
        raise typer.Exit(2) from None
    finally:
        store.close()
    typer.echo(json.dumps(review))


@report_app.command("audit")
def audit(
    flag: Annotated[Optional[str], typer.Option("--flag", help="Only this flag's entries.")] = None,
    index: IndexOption = None,
    config: ConfigOption = None,
) -> None:
    """The audit log, oldest first, one JSON object per line: who acknowledged which flag when, reports written."""
    from fingerprint.identity.reviews import audit_log

    store = _store(config, index)
    try:
        for entry in audit_log(store, flag):
            typer.echo(json.dumps(entry))
    finally:
        store.close()


@report_app.command("deid-qa")
def deid_qa_command(
    export: Annotated[str, typer.Argument(help="The de-identified export: a folder (searched recursively), or an "
                                          "Orthanc server's URL (its user: --export-user; its password: "
                                          "$DBP_EXPORT_ORTHANC_PASSWORD, never the command line).")],
    against: Annotated[Path, typer.Option("--against", help="Index folder of the identified archive.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for deid-qa.html, .csv and .json.")] = Path("reports"),
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per export series too.")] = False,
    export_user: Annotated[str, typer.Option("--export-user", help="User of the export's Orthanc.")] = "",
) -> None:
    """De-identification QA of an export against the identified archive: identifying headers left in (DICOM PS3.15
    basic profile) and claims the data contradicts, series whose brain links back to an archive patient, and faces
    left in the pixels. Writes a self-contained HTML report plus CSV and JSON and prints a summary line. Exit codes:
    0 nothing found; 4 something identifying was found; 5 no DICOM series in the export."""
    from deepbrainprint.settings import load_settings
    from fingerprint.identity.archive import Archive
    from fingerprint.identity.reviews import record_event
    from fingerprint.reports.deid_qa import deid_qa, deid_qa_series, deid_summary, write_deid_report

    from_orthanc = export.startswith(("http://", "https://"))
    if not from_orthanc and not Path(export).is_dir():
        raise typer.BadParameter(f"{export} is neither a folder nor an Orthanc URL")
    with Archive(load_settings(config, index_dir=against).archive_config()) as archive:
        if from_orthanc:
            import os

            from dbp_orthanc.series_reader import orthanc_series

            password = os.environ.get("DBP_EXPORT_ORTHANC_PASSWORD", "")
            series = [(f"orthanc:{s.orthanc_id}", s.load) for s in orthanc_series(export, export_user, password)]
            rows = deid_qa_series(series, archive)
        else:
            rows = deid_qa(Path(export), archive)
        paths = write_deid_report(rows, out)
        record_event(archive.store, "cli", "report: deid-qa", "report", {"series": len(rows)})
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row.as_json()))
    typer.echo(f"{deid_summary(rows)} -> {paths['html']} (+ .csv, .json)", err=as_json)
    if not rows:
        raise typer.Exit(5)
    found = any(r.reidentifiable or r.headers or (r.face or {}).get("face_present") for r in rows)
    raise typer.Exit(4 if found else 0)


@report_app.command("send-results")
def send_results(
    to: Annotated[Optional[str], typer.Option("--to", help="Destination AE@HOST:PORT (default: settings results_destination; empty: off).")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Only flags recorded on or after this day (YYYY-MM-DD).")] = None,
    again: Annotated[bool, typer.Option("--again", help="Also flags whose results were sent before.")] = False,
    index: IndexOption = None,
    config: ConfigOption = None,
) -> None:
    """Send each open flag's results as DICOM objects into its study: a Structured Report (verdict, scores, what
    was compared, model and thresholds) and a Secondary Capture of the evidence pictures, by C-STORE to a PACS.
    The flagged study's patient and study attributes are read from the configured Orthanc (orthanc_url), where the
    series came from. Each sending is kept in the audit log; flags already sent are skipped unless --again.
    Exit codes: 0 sent (or nothing to send); 2 no destination or no Orthanc configured; 3 the destination refused."""
    from dbp_orthanc.writeback import (
        WritebackUnavailable,
        make_client,
        study_attributes,
    )

    from deepbrainprint.settings import load_settings
    from dicom_node.scu import AssociationFailed, send_instances
    from fingerprint.identity.reviews import OPEN, audit_log, record_event
    from fingerprint.model.fingerprinter import load_model
    from fingerprint.reports.dicom_results import results_for_flag
    from fingerprint.reports.flags import collect_flags

    settings = load_settings(config, index_dir=index)
    destination = to or settings.results_destination
    if not destination:
        typer.echo("no destination: --to AE@HOST:PORT or results_destination in the settings", err=True)
        raise typer.Exit(2)
    if not settings.orthanc_url:
        typer.echo("the flagged studies' patient attributes are read from Orthanc: set orthanc_url", err=True)
        raise typer.Exit(2)
    try:
        called_ae, address = destination.split("@", 1)
        host, port = address.rsplit(":", 1)
        port_number = int(port)
    except ValueError:
        raise typer.BadParameter("--to must be AE@HOST:PORT") from None
    client = make_client(settings.orthanc_url, settings.orthanc_username, settings.orthanc_password)
    store = _store(config, index)
    sent = skipped = 0
    try:
        done = {e["target"] for e in audit_log(store) if e["action"] == "results: sent"}
        day = date.fromisoformat(since) if since else None
        model = load_model(settings.model_path)
        for flag in collect_flags(store, since=day, state=OPEN, model=model):
            if flag.flag in done and not again:
                continue
            try:
                study = study_attributes(client, flag.series_instance_uid)
            except WritebackUnavailable as error:
                typer.echo(f"{flag.flag}: Orthanc unavailable ({error}); not sent", err=True)
                skipped += 1
                continue
            if study is None:
                typer.echo(f"{flag.flag}: its series is not in Orthanc; not sent", err=True)
                skipped += 1
                continue
            objects = results_for_flag(flag, study, software_version=model.model_version)
            try:
                result = send_instances(objects, port_number, host=host, called_ae=called_ae,
                                        calling_ae=settings.ae_title)
            except AssociationFailed as error:
                typer.echo(f"the destination refused the association: {error}", err=True)
                raise typer.Exit(3) from None
            if not result.all_ok:
                typer.echo(f"{flag.flag}: the destination refused some objects", err=True)
                raise typer.Exit(3)
            record_event(store, "cli", "results: sent", flag.flag, {"to": called_ae, "objects": len(objects)})
            sent += 1
    finally:
        store.close()
    typer.echo(f"results of {sent} flags sent to {called_ae}; {skipped} not sent")
