"""The dashboard: flags with filters, the evidence view, acknowledgement, and a link to the study in Orthanc.

A small Flask app with server-rendered pages and no front-end build. Everything needs a login: users and their
password hashes come from the settings (``dashboard_users``, made with ``deepbrainprint dashboard --hash-password``;
hashing by werkzeug, Flask's own maintained library), sessions expire after ``dashboard_session_minutes``, and every
form carries a CSRF token (Flask-WTF). URLs name flags (``F<row id>``) and filters only, never a patient or a study;
pages send a Content-Security-Policy that allows no scripts at all.

Example::

    app = create_app(DashboardConfig(store_url="sqlite:///...", users={"alice": hash}, secret_key=key))
    app.run(host="127.0.0.1", port=8080)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, abort, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFProtect
from werkzeug.security import check_password_hash

from fingerprint.identity.reviews import STATES, set_review
from fingerprint.identity.store import Store
from fingerprint.identity.verdicts import ALARMS
from fingerprint.reports.flags import Flag, collect_flags
from fingerprint.reports.render import flag_html, summary_line

log = logging.getLogger(__name__)

#: Pages hold inline pictures (data: URLs) and styles, and no scripts.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class DashboardConfig:
    """What the dashboard needs: the archive's store, who may log in, and how to reach Orthanc for the viewer link."""

    store_url: str
    users: dict[str, str]  # user name -> werkzeug password hash
    secret_key: bytes
    session_minutes: float = 30.0
    orthanc_url: str = ""
    orthanc_username: str = ""
    orthanc_password: str = field(default="", repr=False)
    model: Any = None  # the model that made the fingerprints: adds the saliency picture to the evidence view
    ledger_url: str | None = None  # the worker's ledger (jobs by state) for /metrics; None: not shown
    spool_dir: Path | None = None  # the DICOM node's spool (series not yet processed) for /metrics; None: not shown


def parse_users(value: str) -> dict[str, str]:
    """``"alice:<hash>,bob:<hash>"`` (the ``dashboard_users`` setting) -> {"alice": hash, "bob": hash}."""
    users = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        name, _, hashed = entry.partition(":")
        if not name or not hashed:
            raise ValueError("dashboard_users entries are NAME:HASH (deepbrainprint dashboard --hash-password)")
        users[name] = hashed
    return users


def create_app(config: DashboardConfig) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=config.secret_key,
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=config.session_minutes),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session, which expires
    )
    CSRFProtect(app)
    store = Store(config.store_url)

    def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if session.get("user") not in config.users:
                return redirect(url_for("login"))
            return view(*args, **kwargs)

        return wrapped

    @app.after_request
    def secure(response: Any) -> Any:
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if request.method == "GET":
            return render_template("login.html", title="Log in", user=None, error=None)
        name, password = request.form.get("username", ""), request.form.get("password", "")
        hashed = config.users.get(name)
        if hashed is None or not check_password_hash(hashed, password):
            log.warning("dashboard: failed login")
            return render_template("login.html", title="Log in", user=None, error="Wrong user or password."), 401
        session.clear()
        session.permanent = True
        session["user"] = name
        return redirect(url_for("flags"))

    @app.post("/logout")
    def logout() -> Any:
        session.clear()
        return redirect(url_for("login"))

    @app.get("/metrics")
    def metrics() -> Any:
        """Prometheus metrics: counts only, no patient data, so no login (a scraper has none)."""
        from deepbrainprint.dashboard.metrics import app_ledger, metrics_text

        ledger = app_ledger(app, config.ledger_url) if config.ledger_url else None  # one per app, not per scrape
        return metrics_text(store, ledger, config.spool_dir), 200, {"Content-Type": "text/plain; version=0.0.4"}

    @app.get("/")
    @login_required
    def flags() -> Any:
        state = request.args.get("state") or None
        verdict = request.args.get("verdict") or None
        if state is not None and state not in STATES or verdict is not None and verdict not in ALARMS:
            abort(400)
        found = [f for f in collect_flags(store, state=state, pictures=False) if verdict is None or f.verdict == verdict]
        return render_template("flags.html", title="Flags", user=session["user"], flags=found, states=STATES,
                               verdicts=ALARMS, state=state, verdict=verdict, summary=summary_line(found))

    @app.get("/flags/<flag>")
    @login_required
    def flag(flag: str) -> Any:
        found = _one_flag(store, flag, config.model)
        return render_template("flag.html", title=found.flag, user=session["user"], flag=found, states=STATES,
                               evidence=flag_html(found), viewer=_viewer_link(config, found))

    @app.post("/flags/<flag>/review")
    @login_required
    def review(flag: str) -> Any:
        _one_flag(store, flag, None, pictures=False)
        state = request.form.get("state", "")
        if state not in STATES:
            abort(400)
        set_review(store, flag, state, request.form.get("comment", "")[:2000], session["user"])
        return redirect(url_for("flag", flag=flag))

    return app


def _one_flag(store: Store, flag: str, model: Any, pictures: bool = True) -> Flag:
    try:
        found = collect_flags(store, pictures=pictures, model=model, only=flag)
    except ValueError:
        abort(404)
    if not found:
        abort(404)
    return found[0]


def _viewer_link(config: DashboardConfig, flag: Flag) -> str | None:
    """The flagged study in Orthanc's own explorer (None without Orthanc, or when the study is not there)."""
    if not config.orthanc_url:
        return None
    from dbp_orthanc.writeback import make_client

    try:
        client = make_client(config.orthanc_url, config.orthanc_username, config.orthanc_password)
        study_id = client.studies.lookup(flag.study_instance_uid)
    except Exception:  # noqa: BLE001 - Orthanc down or refusing: the page still shows the evidence
        return None
    return f"{config.orthanc_url.rstrip('/')}/app/explorer.html#study?uuid={study_id}" if study_id else None
