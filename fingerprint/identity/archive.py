"""The identity archive: fingerprint a series, decide its verdict against everything recorded, record it.

Two steps, because they scale differently (the worker calls them separately in scaled-out mode):

* :meth:`Archive.fingerprint` is the heavy part (read DICOM, canonical slice, ResNet-18). It runs anywhere, in any
  number of processes, without a lock.
* :meth:`Archive.decide_and_record` is short and serialised per archive (the store's write lock: SQLite
  ``BEGIN IMMEDIATE`` or a PostgreSQL advisory lock). Inside the lock the process's FAISS index first catches up
  with rows other processes recorded, so two series of the same new person processed at the same moment still find
  each other: whichever records second sees the first.

:meth:`Archive.process` does both and turns a :class:`SeriesRejected` into a stored ``rejected`` verdict, so one bad
series never stops the others and nothing is lost. No clear PatientID leaves this module (hashes only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from fingerprint.errors import SeriesRejected
from fingerprint.identity.ahead import shared as ahead_of_need
from fingerprint.identity.calibration import Thresholds, resolve_thresholds
from fingerprint.identity.index import FingerprintIndex
from fingerprint.identity.patient_ids import hash_patient_id, load_or_create_key
from fingerprint.identity.store import (
    STATUS_FINGERPRINTED,
    STATUS_REJECTED,
    Store,
    slice_to_bytes,
    vector_from_bytes,
    vector_to_bytes,
)
from fingerprint.identity.verdicts import Candidate, decide, rejected_verdict
from fingerprint.identity.verification import METHOD_VERSION as VERIFICATION_VERSION
from fingerprint.identity.verification_stage import PairVerifier, Picks
from fingerprint.imaging.brain import brain_from_bytes, brain_to_bytes
from fingerprint.locations import weights_folder
from fingerprint.types import FingerprintResult, SeriesIdentifiers

#: Save the index file after this many changes (it is a cache: the store is replayed into it on open anyway).
SAVE_INDEX_EVERY = 200

Source = Path | str | Sequence[pydicom.Dataset]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveConfig:
    """Everything an archive needs to know, given explicitly (the application builds it from its settings).

    Example::

        archive = Archive(ArchiveConfig.at(Path("/srv/dbp/index")))   # SQLite store and FAISS index in that folder
        verdict = archive.process(Path("/incoming/series-folder"))
    """

    index_dir: Path
    store_url: str  # sqlite:///... or postgresql+psycopg://...
    model_path: Path | None = None  # None: the shipped weights
    model_runtime: str = "auto"  # fingerprint.model.fingerprinter.RUNTIMES; "int8": its own model version
    slice_method: str = "anatomical"  # or "middle" (the paper's protocol)
    faiss_factory: str = "auto"  # fingerprint.identity.index: exact up to AUTO_EXACT_UP_TO, approximate above
    faiss_search_params: str = ""
    faiss_threads: int = 1
    top_k: int = 5
    patient_id_hash_key: str = ""  # empty: the key file in index_dir (created once)
    keep_clear_patient_id: bool = False
    verification: bool = True
    verify_own_scans: int = 2
    verify_other_patients: int = 3
    evidence_pictures: bool = True
    verification_threads: int = 2

    @classmethod
    def at(cls, index_dir: Path, store_url: str | None = None, **options: Any) -> ArchiveConfig:
        """An archive in ``index_dir``; its store defaults to SQLite there."""
        index_dir = Path(index_dir)
        return cls(index_dir, store_url or f"sqlite:///{index_dir / 'store.sqlite'}", **options)

    @property
    def model_dir(self) -> Path | None:
        """The folder of the configured weights (None: the shipped ones), where their thresholds file sits."""
        if self.model_path is None:
            return None
        return weights_folder(Path(self.model_path).expanduser())


class Archive:
    """One identity archive (store + FAISS index + thresholds), as ``config`` describes it."""

    def __init__(self, config: ArchiveConfig, model: Any = None, thresholds: Thresholds | None = None) -> None:
        self.config = config
        self.store = Store(config.store_url)
        if config.faiss_threads > 0:  # process-wide: OpenMP start-up costs more than one query on a busy host
            import faiss

            faiss.omp_set_num_threads(config.faiss_threads)
        self._hash_key = load_or_create_key(config.index_dir, config.patient_id_hash_key)
        self._model = model
        self._explicit_thresholds = thresholds
        self._indexes: dict[str, FingerprintIndex] = {}
        self._thresholds: dict[str, Thresholds] = {}  # per model version, read once per process
        # The in-memory FAISS indexes are not thread-safe; the store lock serialises processes, this one threads.
        self._local_lock = threading.RLock()
        # A verifier done ahead, handed from fingerprint() to the decision that follows in the same thread.
        self._ahead_verifiers = threading.local()

    # --- the model --------------------------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The fingerprint model (``fingerprint.model.fingerprinter.load_model``), loaded on first use."""
        if self._model is None:
            from fingerprint.model.fingerprinter import load_model

            self._model = load_model(self.config.model_path, runtime=self.config.model_runtime)
        return self._model

    @property
    def model_version(self) -> str:
        return str(self.model.model_version)

    def thresholds(self, model_version: str) -> Thresholds:
        """Explicit ones, else the site's calibration in the store, else the files (index folder, shipped)."""
        if self._explicit_thresholds is not None:
            return self._explicit_thresholds
        return self._calibrated(model_version)

    def _calibrated(self, version: str) -> Thresholds:
        """The site's calibration of a model or verification method version in the store, else the files (index
        folder, shipped), else the labelled fallback; read once per process."""
        if version not in self._thresholds:
            self._thresholds[version] = resolve_thresholds(
                version,
                stored=self.store.load_thresholds(version),
                index_dir=self.config.index_dir,
                model_dir=self.config.model_dir,
            )
        return self._thresholds[version]

    def hash_patient_id(self, patient_id: str) -> str:
        return hash_patient_id(patient_id, self._hash_key)

    # --- the two steps ------------------------------------------------------------------------------------------------
    def fingerprint(self, source: Source) -> FingerprintResult:
        """Read, slice and embed one series (heavy, lock-free). Raises :class:`SeriesRejected` for bad input. A
        folder fingerprinted ahead (:meth:`fingerprint_ahead`) and unchanged since is not computed again, and the
        verifications done ahead with it are used by the decision that follows in this thread."""
        if isinstance(source, (str, Path)) and Path(source).is_dir():
            ahead = ahead_of_need.take(Path(source), self._ahead_kind)
            if ahead is not None:
                result, verifier = ahead
                if verifier is not None:
                    self._ahead_verifiers.verifier = (result, verifier)
                return result
        return self._fingerprint_now(source)

    def fingerprint_ahead(self, folder: Path) -> bool:
        """Fingerprint a series folder before it is handed on (its quiet time is running) and verify it against the
        candidates stored now, for :meth:`fingerprint` to take if the folder does not change meanwhile
        (:mod:`fingerprint.identity.ahead`). True when kept."""

        def work() -> tuple[FingerprintResult, PairVerifier | None]:
            result = self._fingerprint_now(Path(folder))
            try:
                return result, self._verified_ahead(result)
            except Exception as error:  # noqa: BLE001 - e.g. the store away: the decision verifies as ever
                log.warning("verification ahead of hand-on skipped (%s)", type(error).__name__)
                return result, None

        return ahead_of_need.compute(Path(folder), self._ahead_kind, work)

    def _verified_ahead(self, result: FingerprintResult) -> PairVerifier | None:
        """The verification pass the decision makes outside the archive lock, done now on the candidates stored now
        (the decision verifies only those recorded later). None without a verification stage or a SeriesInstanceUID."""
        ids = result.slice.identifiers
        verification_thresholds = self.verification_thresholds()
        if not ids.series_instance_uid or verification_thresholds is None:
            return None
        verifier = self._verifier(result, ids.series_instance_uid, verification_thresholds)
        if verifier is None:
            return None
        vector, patient_hash = _unit_vector(result.vector), self.hash_patient_id(ids.patient_id)
        thresholds = self.thresholds(result.model_version)
        with self._local_lock, self.store.reading() as conn:  # as the decision's first pass (decide_and_record)
            own, neighbours = self._candidates(conn, result.model_version, vector, patient_hash, ids.series_instance_uid)
            self._verify(conn, verifier, own, neighbours, patient_hash, thresholds, verification_thresholds)
        return verifier

    @property
    def _ahead_kind(self) -> str:
        return f"{self.model_version}|{self.config.slice_method}|{self.config.model_path or ''}"

    def _fingerprint_now(self, source: Source) -> FingerprintResult:
        from fingerprint.model.fingerprinter import fingerprint_series

        return fingerprint_series(source, method=self.config.slice_method, model=self.model)

    def decide_and_record(
        self,
        result_or_rejection: FingerprintResult | SeriesRejected,
        source_info: dict[str, Any] | None = None,
        *,
        identifiers: SeriesIdentifiers | None = None,
        record: bool = True,
        patient_id_hash: str | None = None,
    ) -> dict[str, Any]:
        """Search, decide and (unless ``record=False``) record, under the archive lock. Returns the verdict JSON.

        For a rejection, ``identifiers`` (or ``source_info`` keys ``series_instance_uid``, ``study_instance_uid``,
        ``patient_id``) say which series it was; without a SeriesInstanceUID the source's key stands in.
        ``patient_id_hash`` replaces hashing the identifiers' PatientID: ``reindex`` has only the stored hash.
        """
        source_info = dict(source_info or {})
        with self._local_lock:
            if isinstance(result_or_rejection, SeriesRejected):
                ids = identifiers or _identifiers_from_source_info(source_info)
                return self._record_rejection(result_or_rejection, ids, source_info, record)
            return self._decide_fingerprinted(result_or_rejection, source_info, record, patient_id_hash)

    def process(self, source: Source, source_info: dict[str, Any] | None = None, record: bool = True) -> dict:
        """Fingerprint, decide and record one series; a rejection becomes a stored ``rejected`` verdict."""
        source_info = dict(source_info or {})
        if isinstance(source, (str, Path)):
            source_info.setdefault("folder", str(source))
        try:
            result = self.fingerprint(source)
        except SeriesRejected as rejection:
            ids = _identifiers_of_unusable_source(rejection, source_info)
            return self.decide_and_record(rejection, source_info, identifiers=ids, record=record)
        return self.decide_and_record(result, source_info, record=record)

    # --- internals ----------------------------------------------------------------------------------------------------
    def _decide_fingerprinted(
        self, result: FingerprintResult, source_info: dict, record: bool, patient_hash: str | None = None
    ) -> dict[str, Any]:
        ids = result.slice.identifiers
        if not ids.series_instance_uid:  # a series without SeriesInstanceUID: its source is its key
            ids = replace(ids, series_instance_uid=_source_key(source_info))
        model_version = result.model_version
        vector = _unit_vector(result.vector)
        if patient_hash is None:
            patient_hash = self.hash_patient_id(ids.patient_id)
        thresholds = self.thresholds(model_version)
        verification_thresholds = self.verification_thresholds()
        ahead = self._verifier_done_ahead(result)
        verifier = ahead or self._verifier(result, ids.series_instance_uid, verification_thresholds)
        if verifier is not None:  # the heavy part, outside the archive lock (only what is new, if done ahead)
            with self.store.reading() as conn:
                if ahead is not None:
                    ahead.forget_changed(conn)  # a candidate processed again since has another brain
                own, neighbours = self._candidates(conn, model_version, vector, patient_hash, ids.series_instance_uid)
                self._verify(conn, verifier, own, neighbours, patient_hash, thresholds, verification_thresholds)
        transaction = self.store.locked() if record else self.store.reading()
        with transaction as conn:
            recorded = self._recorded_decision(conn, ids, model_version, vector, patient_hash) if record else None
            if recorded is not None:
                row_id, verdict = recorded
                return self._output(verdict, ids, patient_hash, model_version, source_info, row_id)
            own, neighbours = self._candidates(conn, model_version, vector, patient_hash, ids.series_instance_uid)
            if verifier is not None:  # only what other processes recorded meanwhile is verified here
                self._verify(conn, verifier, own, neighbours, patient_hash, thresholds, verification_thresholds)
                own, neighbours = verifier.annotate(own), verifier.annotate(neighbours)
            verdict = decide(
                patient_hash, own, neighbours, thresholds, verification_thresholds if verifier is not None else None
            )
            verdict["neighbours"] = verdict["neighbours"][: max(1, int(self.config.top_k))]
            row = {
                **self._identity_columns(ids, patient_hash, model_version, source_info),
                "status": STATUS_FINGERPRINTED,
                "vector": vector_to_bytes(vector),
                "slice_f16": slice_to_bytes(result.slice.pixels),
                **_verdict_columns(verdict),
            }
            row_id, seq = None, None
            if record:
                if verifier is not None:
                    verifier.record(conn, ids.series_instance_uid, verdict, patient_hash)
                    row.update(_verdict_columns(verdict))
                if result.slice.brain is not None:
                    self.store.save_brain(
                        conn, ids.series_instance_uid, VERIFICATION_VERSION, brain_to_bytes(result.slice.brain)
                    )
                row_id, seq = self.store.upsert_series(conn, row)
        index = self._indexes[model_version]
        if row_id is not None:
            index.add(row_id, seq, vector)  # after the commit: the index never holds an uncommitted row
            self._save_if_due(index)
        return self._output(verdict, ids, patient_hash, model_version, source_info, row_id)

    def _recorded_decision(
        self, conn: Any, ids: SeriesIdentifiers, model_version: str, vector: np.ndarray, patient_hash: str
    ) -> tuple[int, dict[str, Any]] | None:
        """(row id, verdict) already recorded for exactly this series, or None when it must be decided.

        A worker retrying a series whose verdict was committed but whose job was never marked done (a database gone
        between the two, a worker killed between them) must not decide it again: the archive now holds what was
        recorded since, possibly the very scan this one was flagged against, and the pair would be flagged twice.
        "Exactly this series" is the same PatientID, the same instances and the same fingerprint (to ``SAME_FINGERPRINT``); a series re-sent
        with other instances or under a corrected PatientID is decided again.
        """
        row = self.store.series_row(conn, ids.series_instance_uid, model_version)
        if (
            row is None
            or row["status"] != STATUS_FINGERPRINTED
            or row["patient_id_hash"] != patient_hash
            or json.loads(row["sop_instance_uids"] or "[]") != list(ids.sop_instance_uids)
            or not row["vector"]
            or float(vector_from_bytes(row["vector"]) @ vector) < SAME_FINGERPRINT
        ):
            return None
        evidence = json.loads(row["evidence"] or "{}")
        verdict = {
            "verdict": row["verdict"],
            "score": row["score"],
            "verification_score": evidence.pop("verification_score", None),
            "decided_by": evidence.get("decided_by"),
            "matched_patient_id_hash": evidence.pop("matched_patient_id_hash", None),
            "neighbours": evidence.pop("neighbours", []),
            "evidence": {**evidence, "already_recorded": True},
        }
        return int(row["id"]), verdict

    def _candidates(
        self, conn: Any, model_version: str, vector: np.ndarray, patient_hash: str, series_uid: str
    ) -> tuple[list[Candidate], list[Candidate]]:
        """The PatientID's earlier scans (exact similarities) and the nearest other stored series."""
        index = self._synced_index(conn, model_version)
        own_rows = self.store.own_scans(conn, model_version, patient_hash, series_uid)
        own = [_candidate(row, float(row["vector"] @ vector)) for row in own_rows]
        hits = index.search(vector, max(1, int(self.config.top_k)) + len(own) + 1)
        summaries = self.store.summaries(conn, [h.row_id for h in hits])
        neighbours = [
            _candidate(summaries[h.row_id], h.similarity)
            for h in hits
            if h.row_id in summaries and summaries[h.row_id]["series_instance_uid"] != series_uid
        ]
        return own, neighbours

    def _verifier(
        self, result: FingerprintResult, series_uid: str, verification_thresholds: Thresholds | None
    ) -> PairVerifier | None:
        """A verifier for this series' canonical brain (the one just made, or the one recorded with the series when
        ``reindex`` replays it), or None when there is nothing to verify with."""
        if verification_thresholds is None:
            return None
        brain = result.slice.brain
        if brain is None:
            with self.store.reading() as conn:
                stored = self.store.brains(conn, [series_uid], VERIFICATION_VERSION)
            if series_uid not in stored:
                return None
            brain = brain_from_bytes(stored[series_uid])
        return PairVerifier(self.store, brain, keep_pictures=self.config.evidence_pictures,
                            threads=int(self.config.verification_threads))

    def _verifier_done_ahead(self, result: FingerprintResult) -> PairVerifier | None:
        """The verifier :meth:`fingerprint` took with ``result`` from the work done ahead, if it was for this very
        result and the stage is still on (taken once)."""
        pending = getattr(self._ahead_verifiers, "verifier", None)
        self._ahead_verifiers.verifier = None
        if pending is None or pending[0] is not result or self.verification_thresholds() is None:
            return None
        return pending[1]

    def _verify(
        self,
        conn: Any,
        verifier: PairVerifier,
        own: list[Candidate],
        neighbours: list[Candidate],
        patient_hash: str,
        thresholds: Thresholds,
        verification_thresholds: Thresholds,
    ) -> None:
        """Verify the own scans that decide, then, where still needed, the other PatientIDs that come near."""
        picks = Picks(int(self.config.verify_own_scans), int(self.config.verify_other_patients))
        for _round in range(2):  # own scans first: their result says whether other PatientIDs are needed
            chosen = verifier.pick(own, neighbours, patient_hash, picks, thresholds, verification_thresholds)
            verifier.run(conn, chosen)
        verifier.note_brains(conn, [*own, *neighbours])

    def verification_thresholds(self) -> Thresholds | None:
        """The verification stage's calibrated thresholds (store, index folder, shipped), or None when the stage is
        switched off or nothing was calibrated for its method version (the fingerprint then decides alone)."""
        if not self.config.verification:
            return None
        found = self._calibrated(VERIFICATION_VERSION)
        return None if found.source == "fallback" else found

    def _record_rejection(
        self, rejection: SeriesRejected, ids: SeriesIdentifiers, source_info: dict, record: bool
    ) -> dict[str, Any]:
        model_version = self.model_version
        patient_hash = self.hash_patient_id(ids.patient_id)
        if not ids.series_instance_uid:
            ids = replace(ids, series_instance_uid=_source_key(source_info))
        verdict = rejected_verdict(rejection)
        row_id = None
        if record:
            with self.store.locked() as conn:
                index = self._synced_index(conn, model_version)
                row = {
                    **self._identity_columns(ids, patient_hash, model_version, source_info),
                    "status": STATUS_REJECTED,
                    "vector": None,
                    "slice_f16": None,
                    "reject_reason": rejection.reason.value,
                    "reject_detail": rejection.detail[:2000],
                    **_verdict_columns(verdict),
                }
                row_id, seq = self.store.upsert_series(conn, row)
            index.discard(row_id, seq)
        return self._output(verdict, ids, patient_hash, model_version, source_info, row_id)

    def _synced_index(self, conn: Any, model_version: str) -> FingerprintIndex:
        index = self._indexes.get(model_version)
        if index is None:
            index = FingerprintIndex.open(
                self.config.index_dir,
                model_version,
                self.config.faiss_factory,
                self.config.faiss_search_params,
                self.config.model_dir,
            )
            index.sync(self.store, conn, verify_count=True)
            self._indexes[model_version] = index
        else:
            index.sync(self.store, conn)
        return index

    def index_for(self, model_version: str | None = None) -> FingerprintIndex:
        """The index of a model version (default: the model in use), synced with the store now."""
        with self._local_lock, self.store.reading() as conn:
            return self._synced_index(conn, model_version or self.model_version)

    def _save_if_due(self, index: FingerprintIndex) -> None:
        # Proportional: a 1M-vector index is 2 GB to write, while replaying 5% of the rows from the store on the
        # next open is quick; small archives save every SAVE_INDEX_EVERY changes.
        if index.unsaved_changes >= max(SAVE_INDEX_EVERY, index.ntotal // 20):
            index.save()

    def _identity_columns(
        self, ids: SeriesIdentifiers, patient_hash: str, model_version: str, source_info: dict
    ) -> dict[str, Any]:
        return {
            "series_instance_uid": ids.series_instance_uid,
            "model_version": model_version,
            "patient_id_hash": patient_hash,
            "patient_id": ids.patient_id if self.config.keep_clear_patient_id else None,
            "study_instance_uid": ids.study_instance_uid,
            "sop_instance_uids": json.dumps(list(ids.sop_instance_uids)),
            "instance_count": len(ids.sop_instance_uids),
            "study_date": (ids.study_date or "")[:8],
            "modality": (ids.modality or "")[:16],
            "series_description": (ids.series_description or "")[:256],
            "source": json.dumps({**_without_phi(source_info), "key": _source_key(source_info)}, default=str),
        }

    def _output(
        self,
        verdict: dict[str, Any],
        ids: SeriesIdentifiers,
        patient_hash: str,
        model_version: str,
        source_info: dict,
        row_id: int | None,
    ) -> dict[str, Any]:
        return {
            **verdict,
            "series_instance_uid": _real_uid(ids.series_instance_uid),
            "series_key": ids.series_instance_uid,  # what the store is keyed on (the UID, or the source's key)
            "study_instance_uid": ids.study_instance_uid,
            "patient_id_hash": patient_hash,
            "model_version": model_version,
            "recorded": row_id is not None,
            "row_id": row_id,
            "source": _without_phi(source_info),
        }

    def close(self) -> None:
        """Save the indexes (so the next open has less to replay) and release the database."""
        with self._local_lock:
            self._save_all()
        self.store.close()

    def _save_all(self) -> None:
        for index in self._indexes.values():
            if index.unsaved_changes:
                index.save()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unit_vector(vector: Any) -> np.ndarray:
    """A fingerprint as a flat float32 row of unit length (norm floored at 1e-12)."""
    flat = np.asarray(vector, dtype=np.float32).reshape(-1)
    return flat / max(float(np.linalg.norm(flat)), 1e-12)


def _candidate(row: dict[str, Any], similarity: float) -> Candidate:
    return Candidate(
        row_id=int(row["row_id"]),
        similarity=float(similarity),
        patient_id_hash=row["patient_id_hash"],
        series_instance_uid=row["series_instance_uid"],
        study_instance_uid=row["study_instance_uid"],
        study_date=row["study_date"],
        source=row.get("source", {}),
    )


def _verdict_columns(verdict: dict[str, Any]) -> dict[str, Any]:
    evidence = {**verdict["evidence"], "neighbours": verdict["neighbours"]}
    if verdict.get("matched_patient_id_hash"):
        evidence["matched_patient_id_hash"] = verdict["matched_patient_id_hash"]
    if verdict.get("verification_score") is not None:
        evidence["verification_score"] = verdict["verification_score"]
    return {"verdict": verdict["verdict"], "score": verdict["score"], "evidence": json.dumps(evidence)}


#: Cosine at or above which a recorded fingerprint is the same computation again (runtimes and thread counts differ
#: in the last bits of a float32 fingerprint; two different series of one person stay far below).
SAME_FINGERPRINT = 1.0 - 1e-5

#: Store key prefix of series that had no readable SeriesInstanceUID (keyed by where they came from instead).
SOURCE_KEY_PREFIX = "source:"
#: source_info keys that carry patient data: used to identify a rejected series, never stored or printed.
PHI_KEYS = frozenset({"patient_id", "patient_name", "patient_birth_date"})


def _real_uid(series_key: str) -> str:
    return "" if series_key.startswith(SOURCE_KEY_PREFIX) else series_key


def _without_phi(source_info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in source_info.items() if k not in PHI_KEYS}


def _source_key(source_info: dict[str, Any]) -> str:
    """A stable key for where a series came from: what identifies input that has no readable SeriesInstanceUID."""
    if source_info.get("key"):
        return str(source_info["key"])
    basis = source_info.get("orthanc_id") or source_info.get("folder") or json.dumps(source_info, sort_keys=True)
    # (hashed: a source description may contain patient data)
    if source_info.get("folder") and not source_info.get("orthanc_id"):
        basis = str(Path(str(basis)).resolve())
    return SOURCE_KEY_PREFIX + hashlib.sha256(str(basis).encode()).hexdigest()[:32]


def _identifiers_from_source_info(source_info: dict[str, Any]) -> SeriesIdentifiers:
    return SeriesIdentifiers(
        patient_id=str(source_info.get("patient_id", "")),
        study_instance_uid=str(source_info.get("study_instance_uid", "")),
        series_instance_uid=str(source_info.get("series_instance_uid", "")),
    )


def _identifiers_of_unusable_source(rejection: SeriesRejected, source_info: dict[str, Any]) -> SeriesIdentifiers:
    """Who a rejected series belongs to: what the caller knew, else what the reader found in its headers."""
    given = _identifiers_from_source_info(source_info)
    if given.series_instance_uid or rejection.identifiers is None:
        return given
    # As recorded for a rejection: who and which series, not the instance list or the maker the reader also found.
    return replace(rejection.identifiers, sop_instance_uids=(), manufacturer="")


def reindex_archive(archive: Archive, source_version: str, batch_size: int = 64, progress: Any = None) -> dict:
    """Re-embed every fingerprinted series of ``source_version`` with the archive's model, from the stored slices.

    No DICOM is needed: each row keeps its canonical slice (float16). Series are replayed in their original order
    through :meth:`Archive.decide_and_record`, so each gets the verdict the new model gives it at that point of the
    archive's history. Resumable: series already recorded for the new version are skipped. Returns counts.
    """
    from fingerprint.identity.store import slice_from_bytes
    from fingerprint.types import SliceResult

    target = archive.model_version
    if target == source_version:
        raise ValueError(f"the archive's model is already {target!r}; load the new weights (--model) to reindex")
    done = archive.store.recorded_series_uids(target)
    counts: dict[str, int] = {"reindexed": 0, "skipped": 0}
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        vectors = archive.model.embed(np.stack([slice_from_bytes(r["slice_f16"]) for r in pending]))
        for row, vector in zip(pending, vectors):
            ids = SeriesIdentifiers(
                patient_id=row["patient_id"] or "",
                study_instance_uid=row["study_instance_uid"],
                series_instance_uid=row["series_instance_uid"],
                sop_instance_uids=tuple(json.loads(row["sop_instance_uids"])),
                study_date=row["study_date"],
                modality=row["modality"],
                series_description=row["series_description"],
            )
            result = FingerprintResult(vector, target, SliceResult(slice_from_bytes(row["slice_f16"]), ids))
            info = {**json.loads(row["source"]), "reindexed_from": source_version}
            out = archive.decide_and_record(result, info, patient_id_hash=row["patient_id_hash"])
            counts[out["verdict"]] = counts.get(out["verdict"], 0) + 1
            counts["reindexed"] += 1
            if progress is not None:
                progress.update(1)
        pending.clear()

    for row in archive.store.iter_for_reindex(source_version):
        if row["series_instance_uid"] in done:
            counts["skipped"] += 1
            if progress is not None:
                progress.update(1)
            continue
        pending.append(row)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return counts
