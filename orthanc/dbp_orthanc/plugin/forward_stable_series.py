"""Orthanc Python plugin: forward each stable MR series to the DeepBrainPrint storage SCP, retrying on failure.

Why a Python plugin rather than a Lua ``OnStableSeries``: Lua's ``SendToModality`` blocks Orthanc's Lua thread and
has no way to try again later, so one unreachable SCP would either stall every other script or drop the series.
Here the change callback only queues the series; a background thread sends it (C-STORE through Orthanc's own
``/modalities/{name}/store``) and, when the SCP is down or refuses, tries again after growing delays
(``DeepBrainPrint.RetryDelaysSeconds``). Only Orthanc's series identifiers (hashes) are logged, never patient data.

This file runs inside Orthanc's embedded interpreter (the system Python), so it may use only the standard library
and the ``orthanc`` module.
"""

import heapq
import json
import threading
import time

import orthanc

_SETTINGS = json.loads(orthanc.GetConfiguration()).get("DeepBrainPrint", {})
TARGET_MODALITY = _SETTINGS.get("ForwardToModality", "deepbrainprint")
FORWARDED_MODALITIES = set(_SETTINGS.get("ForwardModalities", ["MR"]))
RETRY_DELAYS_S = list(_SETTINGS.get("RetryDelaysSeconds", [2, 5, 15, 60, 300, 900]))

#: Orthanc global property (plugins use ids >= 1024) holding the series not yet forwarded, so that a restart of
#: Orthanc while the SCP is down loses none of them.
PENDING_PROPERTY = 5467

_pending = []  # heap of (due_time, sequence, series_id, attempt)
_unsent = set()  # series ids scheduled and not yet forwarded or given up (mirrored in PENDING_PROPERTY)
_wakeup = threading.Condition()
_stopping = threading.Event()
_sequence = 0


def _remember(series_id, pending):
    """Add or drop a series in the persisted pending set (called under ``_wakeup``)."""
    if pending:
        _unsent.add(series_id)
    else:
        _unsent.discard(series_id)
    orthanc.SetGlobalProperty(PENDING_PROPERTY, json.dumps(sorted(_unsent)))


def _restore_pending():
    """Series a previous run had not forwarded yet are scheduled again at start."""
    try:
        saved = json.loads(orthanc.GetGlobalProperty(PENDING_PROPERTY, "[]") or "[]")
    except ValueError:
        saved = []
    for series_id in saved:
        _schedule(series_id, 0, 0.0)
    if saved:
        orthanc.LogWarning("DeepBrainPrint: %d series still to forward from the previous run" % len(saved))


def _schedule(series_id, attempt, delay_s):
    global _sequence
    with _wakeup:
        if attempt == 0:
            _remember(series_id, True)
        _sequence += 1
        heapq.heappush(_pending, (time.monotonic() + delay_s, _sequence, series_id, attempt))
        _wakeup.notify()


def _series_modality(series_id):
    """The series' Modality, or None when the series has been deleted meanwhile."""
    try:
        series = json.loads(orthanc.RestApiGet("/series/%s" % series_id))
    except Exception:
        return None
    return series.get("MainDicomTags", {}).get("Modality", "")


def _forward(series_id, attempt):
    modality = _series_modality(series_id)
    if modality is None:
        orthanc.LogWarning("DeepBrainPrint: series %s vanished before forwarding" % series_id)
        _forget(series_id)
        return
    if modality not in FORWARDED_MODALITIES:
        _forget(series_id)
        return
    body = json.dumps({"Resources": [series_id], "Synchronous": True})
    try:
        orthanc.RestApiPost("/modalities/%s/store" % TARGET_MODALITY, body)
        orthanc.LogWarning("DeepBrainPrint: forwarded series %s (attempt %d)" % (series_id, attempt + 1))
        _forget(series_id)
    except Exception as error:  # SCP down, refused association, failure status
        if attempt < len(RETRY_DELAYS_S):
            delay = RETRY_DELAYS_S[attempt]
            orthanc.LogWarning(
                "DeepBrainPrint: forwarding series %s failed (%s); retry %d in %ss"
                % (series_id, error, attempt + 1, delay)
            )
            _schedule(series_id, attempt + 1, delay)
        else:
            orthanc.LogError("DeepBrainPrint: giving up forwarding series %s after %d attempts" % (series_id, attempt + 1))
            _forget(series_id)


def _forget(series_id):
    with _wakeup:
        _remember(series_id, False)


def _sender_loop():
    while not _stopping.is_set():
        with _wakeup:
            while not _stopping.is_set() and (not _pending or _pending[0][0] > time.monotonic()):
                timeout = None if not _pending else max(0.0, _pending[0][0] - time.monotonic())
                _wakeup.wait(timeout if timeout is not None else 1.0)
            if _stopping.is_set():
                return
            _, _, series_id, attempt = heapq.heappop(_pending)
        _forward(series_id, attempt)


_sender = threading.Thread(target=_sender_loop, name="deepbrainprint-forward", daemon=True)


def on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        _sender.start()
        _restore_pending()
    elif change_type == orthanc.ChangeType.STABLE_SERIES:
        _schedule(resource_id, 0, 0.0)
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        _stopping.set()
        with _wakeup:
            _wakeup.notify_all()


def on_status(output, uri, **request):
    """GET /deepbrainprint/forwarding: how many series wait to be forwarded, and which ``orthanc`` module this script
    runs against (Orthanc's own, built into the plugin, has no file; a package of that name on sys.path would)."""
    if request.get("method", "GET") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    with _wakeup:
        pending = len(_unsent)
    status = {
        "pending": pending,
        "target_modality": TARGET_MODALITY,
        "orthanc_module": getattr(orthanc, "__file__", None) or "built-in",
    }
    output.AnswerBuffer(json.dumps(status), "application/json")


orthanc.RegisterOnChangeCallback(on_change)
orthanc.RegisterRestCallback("/deepbrainprint/forwarding", on_status)
