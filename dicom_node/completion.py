"""When is a series complete? DICOM has no "end of series" message, so we use Orthanc's StableAge idea.

A series is handed on when every association that sent to it has ended (released or aborted: what was stored is
kept) AND no new instance arrived for ``quiet_time_s``. A sender that keeps one association open and sends series
after series on it would hold them all back, so a series with no new instance for ``open_quiet_time_s`` is handed on
even while its association is open. New instances after a hand-on reopen the series (a new generation) and it is
handed on again. The hand-on callback must be quick (the worker only enqueues); the series is
marked ``queued`` only once it returned without error, otherwise the hand-on is retried with back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .spool import MAX_ASSOCIATION_IDS, SeriesState, Spool, utc_now
from .types import CompletedSeries

log = logging.getLogger(__name__)

OnSeriesComplete = Callable[[CompletedSeries], None]
#: Told (series key, instances folder) when the last association sending to a series ends: the quiet time starts,
#: and a worker with nothing else to do may fingerprint the folder meanwhile. Must return at once; failures ignored.
OnSeriesReleased = Callable[[str, Path], None]

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
PURGE_INTERVAL_S = 3600.0


@dataclass
class _Progress:
    """In-memory view of a series that is receiving or waiting to be handed on."""

    series_key: str
    generation: int
    calling_ae_title: str
    first_received: datetime
    last_received: datetime
    last_received_mono: float
    active_associations: set[str] = field(default_factory=set)
    received_since_flush: int = 0
    changes: int = 0  # bumped by every arrival and store; a hand-on that saw an older value is followed by another
    handing_on: bool = False
    failures: int = 0
    next_attempt_mono: float = 0.0


class CompletionTracker:
    """Decides when series are complete and hands them on, from one background thread."""

    def __init__(
        self,
        spool: Spool,
        on_series_complete: OnSeriesComplete,
        quiet_time_s: float,
        *,
        open_quiet_time_s: float = 60.0,
        keep_done_s: float = 0.0,
        on_series_released: OnSeriesReleased | None = None,
    ) -> None:
        self.spool = spool
        self.on_series_complete = on_series_complete
        self.on_series_released = on_series_released
        self.quiet_time_s = float(quiet_time_s)
        self.open_quiet_time_s = max(float(open_quiet_time_s), self.quiet_time_s)
        self.keep_done_s = float(keep_done_s)  # > 0: purge finished series that old, once an hour (0: never)
        self._next_purge_mono = 0.0
        self._lock = threading.Lock()
        self._series: dict[str, _Progress] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # --- events from the SCP (association threads) ------------------------------------------------------------
    def instance_arriving(self, series_key: str, association_id: str, calling_ae_title: str) -> None:
        """Called BEFORE an instance is written: makes the series ``receiving`` on disk first, so that a crash after
        the write can never leave a new instance under a ``done`` series. Raises SpoolWriteError like the write."""
        with self._lock:
            progress = self._series.get(series_key)
            known = progress is not None and not progress.handing_on
            new_association = progress is None or association_id not in progress.active_associations
        state: SeriesState | None = None
        if not known or new_association:
            state = self.spool.update_state(
                series_key, lambda s: _reopen(s, association_id, calling_ae_title, reopen=not known)
            )
        now, mono = utc_now(), time.monotonic()
        with self._lock:
            progress = self._series.get(series_key)
            if progress is None:
                assert state is not None  # unknown series always went through update_state above
                progress = _Progress(
                    series_key=series_key,
                    generation=state.generation,
                    calling_ae_title=calling_ae_title,
                    first_received=datetime.fromisoformat(state.first_received) if state.first_received else now,
                    last_received=now,
                    last_received_mono=mono,
                )
                self._series[series_key] = progress
            elif not known and state is not None:
                progress.generation = state.generation
            progress.active_associations.add(association_id)
            progress.calling_ae_title = calling_ae_title
            progress.last_received, progress.last_received_mono = now, mono
            progress.changes += 1  # a hand-on running now must not forget the series: this instance is not in it

    def instance_stored(self, series_key: str) -> None:
        """Called after the instance is durably in the spool: counts it and restarts the quiet time."""
        with self._lock:
            progress = self._series.get(series_key)
            if progress is None:  # cannot happen while the association is active; be safe anyway
                return
            progress.last_received, progress.last_received_mono = utc_now(), time.monotonic()
            progress.received_since_flush += 1
            progress.changes += 1

    def association_ended(self, association_id: str) -> None:
        """Released, aborted or dropped: its series may complete once quiet for ``quiet_time_s`` since their last
        instance (what was stored before an abort is kept and handed on like the rest)."""
        with self._lock:
            touched = [p for p in self._series.values() if association_id in p.active_associations]
            for progress in touched:
                progress.active_associations.discard(association_id)
            flushes = [(p.series_key, p.received_since_flush, p.last_received) for p in touched]
            for progress in touched:
                progress.received_since_flush = 0
            released = [p.series_key for p in touched if not p.active_associations and not p.handing_on]
        for series_key, received, last in flushes:
            try:
                self.spool.update_state(series_key, lambda s, n=received, t=last: _add_received(s, n, t))
            except OSError as exc:  # counts are informative; the instances themselves are already durable
                log.warning("series %s: could not update its state file (%s)", series_key, exc)
        self._wake.set()
        for series_key in released if self.on_series_released is not None else ():
            try:
                self.on_series_released(series_key, self.spool.instances_dir(series_key))
            except Exception as exc:  # noqa: BLE001 - an optimisation only: the hand-on does the work anyway
                log.warning("series %s: release notice failed (%s)", series_key, type(exc).__name__)

    # --- restart ----------------------------------------------------------------------------------------------
    def recover_pending(self) -> list[str]:
        """Queue again every spooled series that was not finished (receiving, complete or queued): the process
        that received it may have died before or after handing it on, and hand-ons are idempotent downstream.
        They are handed on at the next check, without waiting for the quiet time (their associations are gone)."""
        keys = []
        for state in self.spool.pending():
            self._register_recovered(state)
            keys.append(state.series_key)
        if keys:
            log.info("recovered %d unfinished series from the spool", len(keys))
        self._wake.set()
        return keys

    def _register_recovered(self, state: SeriesState) -> None:
        now = utc_now()
        first = datetime.fromisoformat(state.first_received) if state.first_received else now
        last = datetime.fromisoformat(state.last_received) if state.last_received else now
        with self._lock:
            if state.series_key in self._series:
                return
            self._series[state.series_key] = _Progress(
                series_key=state.series_key,
                generation=state.generation,
                calling_ae_title=state.calling_ae_title,
                first_received=first,
                last_received=last,
                last_received_mono=float("-inf"),
            )

    # --- the hand-on loop -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dbp-completion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop checking. Series not handed on yet stay ``receiving`` in the spool and are recovered at next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        interval = min(0.25, max(0.02, self.quiet_time_s / 4))
        while not self._stop.is_set():
            try:
                self.check_once()
                self._purge_if_due()
            except Exception:  # never let the loop die: the spool keeps everything, a later check retries
                log.exception("completion check failed")
            self._wake.wait(self.next_wait_s(interval))
            self._wake.clear()

    def next_wait_s(self, longest_s: float) -> float:
        """How long the loop may sleep: until the next series falls due (its quiet time, or its retry), at most
        ``longest_s``. Waking exactly then, rather than at the next fixed tick, hands a series on as soon as its
        quiet time is over; instances and association ends wake the loop anyway."""
        mono = time.monotonic()
        with self._lock:
            dues = [
                max(p.next_attempt_mono, p.last_received_mono
                    + (self.open_quiet_time_s if p.active_associations else self.quiet_time_s))
                for p in self._series.values()
                if not p.handing_on
            ]
        if not dues:
            return longest_s
        return min(longest_s, max(0.0, min(dues) - mono) + 0.001)

    def _purge_if_due(self) -> None:
        if self.keep_done_s <= 0 or time.monotonic() < self._next_purge_mono:
            return
        self._next_purge_mono = time.monotonic() + PURGE_INTERVAL_S
        self.spool.purge_done(self.keep_done_s)

    def check_once(self) -> int:
        """Hand on every series that is due now; returns how many were handed on."""
        mono = time.monotonic()
        with self._lock:
            due = [
                p
                for p in self._series.values()
                if not p.handing_on
                and mono >= p.next_attempt_mono
                and mono - p.last_received_mono
                >= (self.open_quiet_time_s if p.active_associations else self.quiet_time_s)
            ]
            for progress in due:
                progress.handing_on = True
            snapshots = [(p, p.changes) for p in due]
        return sum(self._hand_on(progress, seen) for progress, seen in snapshots)

    def _hand_on(self, progress: _Progress, changes_seen: int) -> bool:
        key, generation = progress.series_key, progress.generation
        instance_count = self.spool.instance_count(key)
        if instance_count == 0:  # every write failed (disk full...): the sender was told, nothing to hand on
            with self._lock:
                if progress.changes == changes_seen and not progress.active_associations:
                    del self._series[key]
                progress.handing_on = False
            return False
        with self._lock:  # counts so far go with the "complete" write (the association may still be open)
            received, progress.received_since_flush = progress.received_since_flush, 0
            last = progress.last_received

        def complete(state: SeriesState) -> None:
            _add_received(state, received, last)
            _set_state(state, "complete", generation)

        try:
            self.spool.update_state(key, complete)
        except OSError as exc:  # a full disk must not hold back what is already stored (processing frees space)
            log.warning("series %s: state file not updated (%s); handing on anyway", key, exc)
        try:
            completed = CompletedSeries(
                series_key=key,
                path=self.spool.instances_dir(key),
                instance_count=instance_count,
                calling_ae_title=progress.calling_ae_title,
                first_received=progress.first_received,
                last_received=progress.last_received,
                generation=generation,
            )
            self.on_series_complete(completed)
        except Exception as exc:
            self._hand_on_failed(progress, exc)
            return False
        reopen = False
        with self._lock:
            progress.handing_on = False
            progress.failures = 0
            if progress.changes == changes_seen:
                del self._series[key]  # later instances (same association or not) start a new generation
            else:
                reopen = True  # instances arrived while handing on: the worker may not have seen them
        try:
            state = self.spool.update_state(key, lambda s: _set_state(s, "queued", generation, handed_on=True))
            if reopen:
                state = self.spool.update_state(key, lambda s: _reopen(s, "", progress.calling_ae_title, True))
                with self._lock:
                    progress.generation = state.generation
        except OSError as exc:  # the worker has it; the state file only lags (recovery would hand it on again)
            log.warning("series %s: handed on but its state file could not be updated (%s)", key, exc)
        log.info("series %s handed on: %d instances, generation %d", key, completed.instance_count, generation)
        return True

    def _hand_on_failed(self, progress: _Progress, exc: Exception) -> None:
        with self._lock:
            progress.handing_on = False
            progress.failures += 1
            delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (progress.failures - 1))
            progress.next_attempt_mono = time.monotonic() + delay
        reason = f"{type(exc).__name__}: {exc}"[:300]
        log.warning("series %s: hand-on failed (%s); retry in %.0f s", progress.series_key, reason, delay)
        try:
            self.spool.update_state(progress.series_key, lambda s: setattr(s, "last_error", reason))
        except OSError:
            pass


def _reopen(state: SeriesState, association_id: str, calling_ae_title: str, reopen: bool) -> None:
    """New instances for a series: back to ``receiving``; a new generation if it had been handed on already."""
    if reopen and state.state != "receiving":
        state.generation += 1
    state.state = "receiving"
    if not state.first_received:
        state.first_received = utc_now().isoformat()
    if calling_ae_title:
        state.calling_ae_title = calling_ae_title
    if association_id and association_id not in state.association_ids:
        state.association_ids = (state.association_ids + [association_id])[-MAX_ASSOCIATION_IDS:]


def _add_received(state: SeriesState, count: int, last: datetime) -> None:
    state.received_count += count
    state.last_received = last.isoformat()


#: The moves the hand-on makes, and the states they start from. Never out of ``done``: a fast worker may finish (and
#: call ``mark_done``) before the callback has even returned here.
_ALLOWED_FROM = {"complete": ("receiving", "complete", "queued"), "queued": ("complete",)}


def _set_state(state: SeriesState, new_state: str, generation: int, handed_on: bool = False) -> bool:
    """Move to ``new_state`` unless newer instances reopened the series meanwhile (another generation) or the
    worker already finished it."""
    if state.generation != generation or state.state not in _ALLOWED_FROM[new_state]:
        return False
    state.state = new_state
    if handed_on:
        state.handed_on_at = utc_now().isoformat()
        state.last_error = ""
    return True
