"""Service metrics in the Prometheus text format: queue depth, jobs by state, verdicts, open flags.

Counts only, nothing about any patient, so ``/metrics`` needs no login (a scraper has none). Read fresh from the
ledger, the spool and the store at each scrape.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import func, select

from dicom_node.spool import Spool
from fingerprint.identity.reviews import OPEN, reviews
from fingerprint.identity.store import Store, series_table
from fingerprint.identity.verdicts import ALARMS
from worker.ledger import Ledger


def metrics_text(store: Store, ledger_url: str | None = None, spool_dir: Path | None = None) -> str:
    """The current metrics as Prometheus exposition text."""
    lines: list[str] = []

    def gauge(name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} gauge"])
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    if ledger_url:
        ledger = Ledger(ledger_url)
        try:
            counts = ledger.counts()
        finally:
            ledger.close()
        gauge("dbp_jobs", "Series jobs in the worker ledger, by state (queued is the queue depth).",
              [(f'{{state="{state}"}}', counts[state]) for state in ("queued", "running", "done", "failed")])
        gauge("dbp_writeback_pending", "Verdicts waiting to be written back to Orthanc.",
              [("", counts["writeback_pending"])])
    if spool_dir is not None:
        gauge("dbp_spool_series_pending", "Series received by the DICOM node and not yet processed.",
              [("", len(Spool(spool_dir).pending()))])
    c = series_table.c
    with store.reading() as conn:
        verdicts = dict(conn.execute(select(c.verdict, func.count()).group_by(c.verdict)).all())
        alarm_ids = [int(r[0]) for r in conn.execute(select(c.id).where(c.verdict.in_(ALARMS)))]
    gauge("dbp_series_recorded", "Series recorded in the archive, by verdict.",
          [(f'{{verdict="{verdict}"}}', count) for verdict, count in sorted(verdicts.items())])
    reviewed = reviews(store, alarm_ids)
    open_flags = sum(1 for row_id in alarm_ids if reviewed.get(row_id, {"state": OPEN})["state"] == OPEN)
    gauge("dbp_flags_open", "Alarms nobody has acknowledged yet.", [("", open_flags)])
    return "\n".join(lines) + "\n"
