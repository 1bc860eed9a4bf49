"""The reliability bench's counting: fault and bad-input tests record what they sent and how each item ended.

When ``DBP_RELIABILITY_LOG`` names a file, each call appends one JSON line to it (``bench/reliability.py`` sets it
and sums the lines); otherwise the calls do nothing, so the tests run the same with or without the bench.

Counts are what the test observed, not what it expected: ``lost`` is derived (sent, less those that ended in a
verdict or a stated rejection), so a test that loses something records it before its own assertions fail.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV_VAR = "DBP_RELIABILITY_LOG"


def _append(row: dict) -> None:
    target = os.environ.get(ENV_VAR)
    if not target:
        return
    row = {**row, "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0], "at": time.time()}
    with open(Path(target), "a", encoding="utf-8") as fh:  # one short write per line: appends do not interleave
        fh.write(json.dumps(row, sort_keys=True) + "\n")


def record_fault(name: str, *, sent: int, verdicts: int, rejected: int, unit: str = "series", **facts: object) -> None:
    """One fault survived (or not): ``sent`` items went in, ``verdicts`` ended in a verdict, ``rejected`` in a stated
    rejection (a ``rejected`` verdict with its reason, or a failure status the sender got). ``unit`` is "series"
    (what a verdict is about) or "instances" (tests of the DICOM node alone: ``verdicts`` counts instances stored
    and handed on, ``rejected`` those refused with a failure status, so ``lost`` is a success with nothing on disk).
    ``facts``: figures worth reporting with the fault (seconds to recovery, peak memory), numbers or short text."""
    _append({"kind": "fault", "fault": name, "unit": unit, "sent": int(sent), "verdicts": int(verdicts),
             "rejected": int(rejected), "lost": int(sent) - int(verdicts) - int(rejected), "facts": facts})


def record_bad_inputs(name: str, *, tried: int, crashes: int) -> None:
    """A bad-input suite: how many malformed inputs were tried and how many ended in anything but a volume or a
    stated rejection (an unexpected exception)."""
    _append({"kind": "bad_inputs", "suite": name, "tried": int(tried), "crashes": int(crashes)})


def record_jobs(name: str, jobs: list, *, sent: int, **facts: object) -> None:
    """:func:`record_fault` counted from the worker ledger's jobs (``worker.ledger.Job``): a series ended in a verdict,
    or in a stated rejection, when a job of it is ``done`` with one; counted once per SeriesInstanceUID (a series
    that came twice, late instances making a new generation, ends once)."""
    ends = {job.verdict.get("series_instance_uid") or job.series_key: job.verdict
            for job in jobs if job.state == "done" and job.verdict}
    record_fault(name, sent=sent, verdicts=sum(1 for v in ends.values() if v.get("verdict") != "rejected"),
                 rejected=sum(1 for v in ends.values() if v.get("verdict") == "rejected" and v.get("rejected")),
                 **facts)
