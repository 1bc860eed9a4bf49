"""Writing a report: one self-contained HTML page (pictures inline), plus CSV and JSON for scripts.

The HTML needs nothing but a browser: no scripts, no external files, pictures as ``data:`` URLs, every value escaped.
CSV and JSON carry the same rows without the pictures (their captions in JSON).
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from fingerprint.reports.flags import Flag

CSV_COLUMNS = (
    "flag", "recorded_at", "verdict", "state", "study_date", "study_instance_uid", "series_instance_uid", "patient",
    "matched_patient", "score", "verification_score", "decided_by", "reason", "next_step", "comment", "reviewer",
    "reviewed_at",
)

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-bottom: 0.2em; }
.flag { border: 1px solid #ccc; border-radius: 6px; padding: 0.8em 1em; margin: 1em 0; }
.identity_mismatch { border-left: 6px solid #c0392b; } .possible_duplicate { border-left: 6px solid #d68910; }
.needs_review { border-left: 6px solid #2874a6; }
table.facts td { padding: 0.1em 0.8em 0.1em 0; vertical-align: top; font-size: 0.9em; }
figure { display: inline-block; margin: 0.4em 0.8em 0.4em 0; vertical-align: top; max-width: 420px; }
figcaption { font-size: 0.8em; color: #555; } img { max-width: 100%; border: 1px solid #ddd; }
.state { font-weight: bold; } .next { background: #f6f6f6; padding: 0.4em 0.6em; }
"""


def summary_line(flags: list[Flag]) -> str:
    """'N flags: a identity_mismatch, b possible_duplicate; x open, y resolved, z false_alarm'."""
    verdicts = Counter(f.verdict for f in flags)
    states = Counter(f.state for f in flags)
    return (f"{len(flags)} flags: " + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
            + ("; " if flags else "") + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))


def write_flags_report(flags: list[Flag], out_dir: Path, title: str = "DeepBrainPrint flags") -> dict[str, Path]:
    """Write flags.html, flags.csv and flags.json into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / "flags.html", "csv": out_dir / "flags.csv", "json": out_dir / "flags.json"}
    written = datetime.now(timezone.utc).isoformat(timespec="seconds")
    paths["html"].write_text(flags_html(flags, title, written), encoding="utf-8")
    with open(paths["csv"], "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for flag in flags:
            writer.writerow({k: ("" if v is None else v) for k, v in flag.as_json().items()})
    paths["json"].write_text(json.dumps({"written_at": written, "summary": summary_line(flags),
                                         "flags": [f.as_json() for f in flags]}, indent=2) + "\n", encoding="utf-8")
    return paths


def flags_html(flags: list[Flag], title: str, written: str) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{e(title)}</h1><p>{e(summary_line(flags))}. Written {e(written)}; newest first. Patients are "
             f"shown as keyed hashes unless the site keeps clear PatientIDs.</p>"]
    for flag in flags:
        parts.append(flag_html(flag))
    if not flags:
        parts.append("<p>No flags.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def flag_html(flag: Flag) -> str:
    """One flag as an HTML section (also what the dashboard's evidence view shows)."""
    e = html.escape

    def fmt(value: object, digits: int) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else "-"

    facts = [
        ("verdict", flag.verdict), ("review", f"{flag.state}" + (f" by {flag.reviewer}: {flag.comment}" if flag.reviewer else "")),
        ("recorded", flag.recorded_at), ("study date", flag.study_date), ("study", flag.study_instance_uid),
        ("series", flag.series_instance_uid), ("patient", flag.patient), ("matched patient", flag.matched_patient or "-"),
        ("fingerprint similarity", fmt(flag.score, 4)), ("3D verification", fmt(flag.verification_score, 3)),
        ("decided by", flag.decided_by or "-"), ("why", flag.reason),
        ("thresholds", _thresholds_text(flag)),
    ]
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in facts)
    figures = "".join(
        f"<figure><img alt='{e(p.caption)}' src='data:image/png;base64,{base64.b64encode(p.png).decode()}'>"
        f"<figcaption>{e(p.caption)}</figcaption></figure>"
        for p in flag.pictures
    )
    return (f"<section class='flag {e(flag.verdict)}' id='{e(flag.flag)}'><h2>{e(flag.flag)}: {e(flag.verdict)} "
            f"<span class='state'>[{e(flag.state)}]</span></h2><table class='facts'>{rows}</table>"
            f"<p class='next'>{e(flag.next_step)}</p>{figures}</section>")


def _thresholds_text(flag: Flag) -> str:
    parts = []
    for name, t in (("fingerprint", flag.thresholds), ("verification", flag.verification_thresholds)):
        if t:
            where = t.get("calibrated_on") or t.get("source")
            parts.append(f"{name} match {t.get('match'):.4g} / mismatch {t.get('mismatch'):.4g} ({where})")
    return "; ".join(parts) or "-"
