"""Write a verdict back where radiology IT looks: metadata (and labels, on Orthanc 1.12+) on the series and study.

Through ``orthanc-api-client``. The metadata names are declared in ``orthanc.json`` (this package) (``UserMetadata``):
Orthanc refuses undeclared names. Labels arrived in Orthanc 1.12; the version is read from ``/system`` and labels
are skipped, with the reason in the returned report, on older servers (Debian's 1.10.1 among them).

Errors are sorted into two kinds because the worker treats them differently: :class:`WritebackUnavailable`
(Orthanc down, timing out, refusing our credentials, answering 5xx: try again later, keep the verdict meanwhile) and
"the series is not in this Orthanc" (sent straight to the SCP: nothing to write, never retried).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from orthanc_api_client import OrthancApiClient
from orthanc_api_client import exceptions as orthanc_errors

METADATA_VERDICT = "DeepBrainPrintVerdict"
METADATA_SCORE = "DeepBrainPrintScore"
METADATA_BEST_MATCH = "DeepBrainPrintBestMatch"
METADATA_MODEL_VERSION = "DeepBrainPrintModelVersion"
METADATA_DETAIL = "DeepBrainPrintDetail"
LABEL_PREFIX = "dbp-"
LABELS_SINCE = (1, 12)


class WritebackUnavailable(Exception):
    """Orthanc could not take the verdict now (down, refusing, erroring): retry later, keep the verdict."""


@dataclass
class WritebackReport:
    """What was written, for the worker's log and ledger."""

    written: bool
    series_orthanc_id: str = ""
    study_orthanc_id: str = ""
    labels: list[str] = field(default_factory=list)
    note: str = ""


def make_client(url: str, username: str, password: str) -> OrthancApiClient:
    return OrthancApiClient(url, user=username or None, pwd=password or None)


def best_match_of(verdict: dict[str, Any]) -> str:
    """The hashed PatientID the series matched instead of its own (duplicate/mismatch), or ''. Never a clear ID."""
    return str(verdict.get("matched_patient_id_hash") or verdict.get("best_match") or "")


def verdict_metadata(verdict: dict[str, Any]) -> dict[str, str]:
    """The metadata values to write: short fields for display, and the whole verdict for tools."""
    score = verdict.get("score")
    # Where the series and its neighbours came from (spool paths, AE titles) stays in the store, not in the PACS.
    detail = {k: v for k, v in verdict.items() if k not in {"patient_id", "source", "neighbours"}}
    detail["neighbours"] = [
        {k: v for k, v in n.items() if k != "source"} for n in verdict.get("neighbours") or [] if isinstance(n, dict)
    ]
    return {
        METADATA_VERDICT: str(verdict.get("verdict", "")),
        METADATA_SCORE: "" if score is None else f"{float(score):.4f}",
        METADATA_BEST_MATCH: best_match_of(verdict),
        METADATA_MODEL_VERSION: str(verdict.get("model_version", "")),
        METADATA_DETAIL: json.dumps(detail, sort_keys=True, default=str),
    }


def supports_labels(client: OrthancApiClient) -> bool:
    return client.is_orthanc_version_at_least(*LABELS_SINCE)


def write_verdict(client: OrthancApiClient, series_instance_uid: str, verdict: dict[str, Any]) -> WritebackReport:
    """Put ``verdict`` on the series with this SeriesInstanceUID and on its study.

    Returns ``written=False`` with a note when the series is not in this Orthanc; raises
    :class:`WritebackUnavailable` when Orthanc is down or refuses.
    """
    try:
        series_id = client.series.lookup(series_instance_uid)
        if not series_id:
            return WritebackReport(written=False, note="series not in this Orthanc")
        study_id = client.series.get_parent_study_id(series_id)
        values = verdict_metadata(verdict)
        for name, value in values.items():
            client.series.set_string_metadata(series_id, name, value)
            client.studies.set_string_metadata(study_id, name, value)
        labels: list[str] = []
        note = ""
        if supports_labels(client):
            labels = [f"{LABEL_PREFIX}{values[METADATA_VERDICT]}".replace("_", "-")]
            client.series.add_labels(series_id, labels)
            client.studies.add_labels(study_id, labels)
        else:
            note = f"labels skipped: Orthanc {client.get_system().get('Version')} < {LABELS_SINCE[0]}.{LABELS_SINCE[1]}"
        return WritebackReport(True, series_id, study_id, labels, note)
    except orthanc_errors.ResourceNotFound:
        return WritebackReport(written=False, note="series not in this Orthanc")
    except (orthanc_errors.ConnectionError, orthanc_errors.TimeoutError, orthanc_errors.NotAuthorized) as error:
        raise WritebackUnavailable(type(error).__name__) from None
    except orthanc_errors.HttpError as error:
        raise WritebackUnavailable(f"HTTP {error.http_status_code}") from None


def read_verdict(client: OrthancApiClient, series_instance_uid: str) -> dict[str, str]:
    """The DeepBrainPrint metadata on a series ({} when none): for tests and for ``deepbrainprint`` status views."""
    series_id = client.series.lookup(series_instance_uid)
    if not series_id:
        return {}
    result = {}
    for name in (METADATA_VERDICT, METADATA_SCORE, METADATA_BEST_MATCH, METADATA_MODEL_VERSION, METADATA_DETAIL):
        value = client.series.get_string_metadata(series_id, name, default_value="")
        if value:
            result[name] = value
    return result


def study_attributes(client: OrthancApiClient, series_instance_uid: str) -> dict[str, str] | None:
    """The patient and study attributes of the study holding this series, as Orthanc has them (its main DICOM tags),
    plus one of the series' SOPInstanceUIDs: what a result object needs to file into that study. None when the
    series is not in this Orthanc; :class:`WritebackUnavailable` when Orthanc is down or refuses."""
    try:
        series_id = client.series.lookup(series_instance_uid)
        if not series_id:
            return None
        study_id = client.series.get_parent_study_id(series_id)
        study = client.get_json(f"studies/{study_id}")
        instances = client.get_json(f"series/{series_id}/instances")
    except orthanc_errors.ResourceNotFound:
        return None
    except (orthanc_errors.ConnectionError, orthanc_errors.TimeoutError, orthanc_errors.NotAuthorized) as error:
        raise WritebackUnavailable(type(error).__name__) from None
    except orthanc_errors.HttpError as error:
        raise WritebackUnavailable(f"HTTP {error.http_status_code}") from None
    attributes = {**study.get("PatientMainDicomTags", {}), **study.get("MainDicomTags", {})}
    if instances:
        attributes["ReferencedSOPInstanceUID"] = instances[0].get("MainDicomTags", {}).get("SOPInstanceUID", "")
    return {k: str(v) for k, v in attributes.items()}
