"""What people decided about each flag, and who did what when: the review state of alarms and the audit log.

A *flag* is a recorded series whose verdict is an alarm (``identity_mismatch``, ``possible_duplicate``,
``needs_review``). Radiology IT acknowledges it as ``resolved`` (the records were fixed) or ``false_alarm`` (nothing
was wrong), with a comment and their name, or opens it again. The state is one row per flag; every change is also
appended to the audit log, which is never rewritten (both tables are part of the store's schema). Flags are named
``F<row id>`` (the store's row id): nothing that identifies the patient or the study goes into a flag's name, a URL
or a log line.

Example::

    set_review(store, "F12", "false_alarm", "same twin, checked demographics", "j.smith")
    [entry["action"] for entry in audit_log(store, "F12")]   # ["review: false_alarm"]
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select

from fingerprint.identity.store import Store, audit_table, reviews_table, series_table

OPEN, RESOLVED, FALSE_ALARM = "open", "resolved", "false_alarm"
STATES = (OPEN, RESOLVED, FALSE_ALARM)
FLAG_PREFIX = "F"


def flag_id(row_id: int) -> str:
    return f"{FLAG_PREFIX}{int(row_id)}"


def row_id_of(flag: str) -> int:
    """The store row id of a flag name (``F12`` -> 12); ValueError for anything else."""
    if not flag.startswith(FLAG_PREFIX) or not flag[len(FLAG_PREFIX) :].isdigit():
        raise ValueError(f"not a flag id: {flag!r} (flags are named F<number>)")
    return int(flag[len(FLAG_PREFIX) :])


def set_review(store: Store, flag: str, state: str, comment: str, reviewer: str) -> dict[str, Any]:
    """Record a decision about a flag (and append it to the audit log); returns the new review state."""
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
    if not reviewer.strip():
        raise ValueError("a review needs the reviewer's name")
    row_id = row_id_of(flag)
    now = datetime.now(timezone.utc)
    with store.locked() as conn:
        exists = conn.execute(select(series_table.c.id).where(series_table.c.id == row_id)).first()
        if exists is None:
            raise KeyError(f"no flag {flag} in this archive")
        conn.execute(reviews_table.delete().where(reviews_table.c.series_id == row_id))
        conn.execute(reviews_table.insert().values(
            series_id=row_id, state=state, comment=comment, reviewer=reviewer, updated_at=now))
        conn.execute(audit_table.insert().values(
            at=now, actor=reviewer, action=f"review: {state}", target=flag, details=json.dumps({"comment": comment})))
    return {"flag": flag, "state": state, "comment": comment, "reviewer": reviewer, "updated_at": now.isoformat()}


def reviews(store: Store, row_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The review state of these rows (those never reviewed are absent: they are open)."""
    if not row_ids:
        return {}
    with store.reading() as conn:
        rows = conn.execute(select(reviews_table).where(reviews_table.c.series_id.in_(row_ids))).all()
    return {
        int(r.series_id): {"state": r.state, "comment": r.comment, "reviewer": r.reviewer,
                           "updated_at": r.updated_at.isoformat() if r.updated_at else None}
        for r in rows
    }


def audit_log(store: Store, flag: str | None = None) -> list[dict[str, Any]]:
    """The audit log, oldest first (of one flag, or all)."""
    query = select(audit_table).order_by(audit_table.c.id)
    if flag is not None:
        query = query.where(audit_table.c.target == flag)
    with store.reading() as conn:
        rows = conn.execute(query).all()
    return [{"at": r.at.isoformat() if r.at else None, "actor": r.actor, "action": r.action, "target": r.target,
             "details": json.loads(r.details or "{}")} for r in rows]


def record_event(store: Store, actor: str, action: str, target: str, details: dict[str, Any] | None = None) -> None:
    """Append one event to the audit log (a report written, a flag viewed)."""
    with store.locked() as conn:
        conn.execute(audit_table.insert().values(at=datetime.now(timezone.utc), actor=actor, action=action,
                                                 target=target, details=json.dumps(details or {})))
