"""De-identification QA: can a de-identified export be linked back to the identified archive's patients?

Three questions per export series, answered together because no single check answers more than one:

1. **Headers** (:mod:`fingerprint.reports.deid_headers`): attributes that still identify someone, UIDs or
   PatientIDs the identified archive also holds, and claims the data contradicts.
2. **Brains**: the series is fingerprinted and verified against the archive, as a query (nothing recorded). A series
   the archive confirms as one of its patients (its first scan under the export's pseudonym would be a
   ``possible_duplicate``; a kept PatientID, ``consistent``) is *re-identifiable*; the report gives the patient (hash,
   or clear ID where the archive keeps it), both scores and the verdict, and the share of such series.
3. **Faces** (:mod:`fingerprint.imaging.face`): whether skin remains in front of the face after alignment.

Example::

    with Archive(config) as archive:
        rows = deid_qa(Path("/exports/study-42"), archive)
    paths = write_deid_report(rows, Path("reports"))
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select

from fingerprint.errors import SeriesRejected
from fingerprint.identity.archive import Archive
from fingerprint.identity.store import series_table
from fingerprint.identity.verdicts import CONSISTENT, IDENTITY_MISMATCH, POSSIBLE_DUPLICATE
from fingerprint.imaging.dicom_read import find_series, read_dicom_file
from fingerprint.imaging.pipeline import slice_series
from fingerprint.reports.deid_headers import HeaderFinding, claimed_methods, header_findings
from fingerprint.reports.flags import slice_png
from fingerprint.types import FingerprintResult


@dataclass
class SeriesQA:
    """What the QA found for one export series."""

    series: str  # the export folder (and series UID where one folder holds several)
    instances: int
    claims: list[str]
    headers: list[HeaderFinding]
    face: dict[str, Any] | None = None
    linked_patient: str | None = None  # the archive patient the brain links to (hash, or clear ID if kept)
    verdict: str | None = None
    score: float | None = None
    verification_score: float | None = None
    rejected: str | None = None
    slice_png: bytes = field(default=b"", repr=False)

    @property
    def reidentifiable(self) -> bool:
        return self.linked_patient is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "series": self.series, "instances": self.instances, "claims": self.claims,
            "header_findings": [f.as_json() for f in self.headers], "face": self.face,
            "reidentifiable": self.reidentifiable, "linked_patient": self.linked_patient, "verdict": self.verdict,
            "score": self.score, "verification_score": self.verification_score, "rejected": self.rejected,
        }


def deid_qa(export_dir: Path, archive: Archive) -> list[SeriesQA]:
    """Check every series in ``export_dir`` (searched recursively) against ``archive``."""
    groups = find_series(Path(export_dir))

    def loader(paths: list[Path]) -> Callable[[], list[Any]]:
        return lambda: [ds for ds in (read_dicom_file(f) for f in paths) if ds is not None]

    return deid_qa_series(
        [(str(export_dir) if len(groups) == 1 else f"{export_dir}#{name}", loader(paths))
         for name, paths in sorted(groups.items())],
        archive,
    )


def deid_qa_series(series: list[tuple[str, Callable[[], list[Any]]]], archive: Archive) -> list[SeriesQA]:
    """Check each ``(label, load)`` series (``load`` returns its datasets) against ``archive``: an export folder's,
    or an export held in an Orthanc server."""
    rows = []
    for label, load in series:
        datasets = load()
        header = datasets[0] if datasets else None
        row = SeriesQA(label, len(datasets), sorted(claimed_methods(header)) if header is not None else [], [])
        try:
            sliced = slice_series(datasets, with_face=True)
        except SeriesRejected as rejection:
            row.rejected = rejection.reason.value
        else:
            row.face = sliced.geometry.get("face")
            row.slice_png = slice_png(sliced.pixels)
            result = FingerprintResult(archive.model.embed(sliced.pixels[None])[0], archive.model_version, sliced)
            _link(row, archive.decide_and_record(result, {"folder": label}, record=False))
        if header is not None:
            row.headers = header_findings(header, _archive_uids(archive, header),
                                          row.face.get("face_present") if row.face else None)
            if _archive_knows_patient(archive, header):
                row.headers.insert(0, HeaderFinding("ID", "PatientID", "the identified archive's own PatientID"))
        rows.append(row)
    return rows


def _link(row: SeriesQA, verdict: dict[str, Any]) -> None:
    """Whether the archive confirmed the brain as one of its patients, and which."""
    row.verdict, row.score, row.verification_score = (
        verdict["verdict"], verdict.get("score"), verdict.get("verification_score"))
    if verdict["verdict"] in (POSSIBLE_DUPLICATE, IDENTITY_MISMATCH) and verdict.get("matched_patient_id_hash"):
        row.linked_patient = verdict["matched_patient_id_hash"]
    elif verdict["verdict"] == CONSISTENT:
        row.linked_patient = verdict.get("patient_id_hash")


def _archive_uids(archive: Archive, header: Any) -> set[str]:
    """Which of this instance's Study/Series UIDs the identified archive holds."""
    uids = {str(header.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID") if header.get(k)}
    if not uids:
        return set()
    c = series_table.c
    with archive.store.reading() as conn:
        rows = conn.execute(select(c.study_instance_uid, c.series_instance_uid).where(
            or_(c.study_instance_uid.in_(uids), c.series_instance_uid.in_(uids)))).all()
    return {uid for row in rows for uid in row if uid in uids}


def _archive_knows_patient(archive: Archive, header: Any) -> bool:
    patient_id = str(header.get("PatientID", "") or "")
    if not patient_id:
        return False
    c = series_table.c
    with archive.store.reading() as conn:
        found = conn.execute(select(c.id).where(c.patient_id_hash == archive.hash_patient_id(patient_id)).limit(1)).first()
    return found is not None


def deid_summary(rows: list[SeriesQA]) -> str:
    linked = sum(r.reidentifiable for r in rows)
    faces = [r for r in rows if r.face and r.face.get("face_present")]
    with_headers = sum(1 for r in rows if r.headers)
    claimed_clean = sum(1 for r in faces if "113102" in r.claims)
    share = f"{linked / len(rows):.0%}" if rows else "-"
    return (f"{len(rows)} series: {with_headers} with header findings, {linked} re-identifiable by brain "
            f"({share}), {len(faces)} with a face ({claimed_clean} of them claiming 113102)")


def write_deid_report(rows: list[SeriesQA], out_dir: Path, title: str = "De-identification QA") -> dict[str, Path]:
    """deid-qa.html (pictures inline), deid-qa.csv and deid-qa.json in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / "deid-qa.html", "csv": out_dir / "deid-qa.csv", "json": out_dir / "deid-qa.json"}
    written = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summary = deid_summary(rows)
    paths["json"].write_text(json.dumps({"written_at": written, "summary": summary,
                                         "series": [r.as_json() for r in rows]}, indent=2) + "\n")
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["series", "instances", "claims", "header_findings", "face_present", "reidentifiable",
                         "linked_patient", "verdict", "score", "verification_score", "rejected"])
        for r in rows:
            writer.writerow([r.series, r.instances, " ".join(r.claims), "; ".join(f.attribute for f in r.headers),
                             (r.face or {}).get("face_present", ""), r.reidentifiable, r.linked_patient or "",
                             r.verdict or "", r.score if r.score is not None else "",
                             r.verification_score if r.verification_score is not None else "", r.rejected or ""])
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:sans-serif;margin:1.5em} section{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;"
             "margin:1em 0} .bad{border-left:6px solid #c0392b} td{padding:.1em .8em .1em 0;font-size:.9em}</style>"
             f"</head><body><h1>{e(title)}</h1><p>{e(summary)}. Written {e(written)}.</p>"]
    for r in rows:
        bad = r.reidentifiable or r.headers or (r.face or {}).get("face_present")
        facts = [("instances", r.instances), ("claims", ", ".join(r.claims) or "none"),
                 ("brain", f"links to {r.linked_patient} ({r.verdict}; fingerprint {r.score}, 3D {r.verification_score})"
                  if r.reidentifiable else (f"rejected: {r.rejected}" if r.rejected else f"no archive patient ({r.verdict})")),
                 ("face", "present" if (r.face or {}).get("face_present") else
                  ("not measured" if not r.face else ("removed" if r.face.get("in_field_of_view") else "not in view")))]
        facts += [(f"header: {f.attribute}", f"{f.kind}: {f.detail}") for f in r.headers]
        rows_html = "".join(f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in facts)
        picture = (f"<img alt='canonical slice' src='data:image/png;base64,{base64.b64encode(r.slice_png).decode()}'>"
                   if r.slice_png else "")
        parts.append(f"<section class='{'bad' if bad else 'ok'}'><h2>{e(r.series)}</h2><table>{rows_html}</table>"
                     f"{picture}</section>")
    parts.append("</body></html>")
    paths["html"].write_text("\n".join(parts))
    return paths
