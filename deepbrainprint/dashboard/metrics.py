"""Service metrics in the Prometheus text format: queue depth, jobs by state, verdicts, open flags.

Counts only, nothing about any patient, so ``/metrics`` needs no login (a scraper has none). Read fresh from the
ledger, the spool and the store at each scrape. The dashboard keeps one ledger per app (:func:`app_ledger`, opened at
the first scrape): a ledger is an engine and a schema check, too much to build again every few seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from dicom_node.spool import Spool
from fingerprint.identity.reviews import OPEN, reviews
from fingerprint.identity.store import Store, series_table
from fingerprint.identity.verdicts import ALARMS
from worker.ledger import Ledger


_APP_LEDGER_KEY = "dbp_metrics_ledger"
_app_ledger_lock = threading.Lock()


def app_ledger(app: Any, url: str) -> Ledger:
    """The one ledger a dashboard app's scrapes share, opened at its first scrape and kept in ``app.extensions``.

    Flask has no hook for an app being torn down (``teardown_appcontext`` runs after every request), so the ledger
    lives as long as the app does, which for the dashboard is the process.
    """
    with _app_ledger_lock:  # the dashboard serves threaded: two first scrapes at once still open one
        ledger = app.extensions.get(_APP_LEDGER_KEY)
        if ledger is None:
            ledger = app.extensions[_APP_LEDGER_KEY] = Ledger(url)
        return ledger


def _job_counts(ledger: Ledger | str) -> dict[str, int]:
    if not isinstance(ledger, str):
        return ledger.counts()
    own = Ledger(ledger)
    try:
        return own.counts()
    finally:
        own.close()


def metrics_text(store: Store, ledger: Ledger | str | None = None, spool_dir: Path | None = None) -> str:
    """The current metrics as Prometheus exposition text.

    ``ledger``: the worker's ledger, kept by the caller, or its URL (opened and closed for this one call); None
    leaves the job counts out.
    """
    lines: list[str] = []

    def gauge(name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} gauge"])
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    if ledger:
        counts = _job_counts(ledger)
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
