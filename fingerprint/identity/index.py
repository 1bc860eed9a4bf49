"""The FAISS index of one model version's fingerprints: a disposable, always-rebuildable cache of the store.

Vector ids are the store's row ids (``IndexIDMap2``), so a search answers directly with rows. Exact inner product
(``"Flat"``; fingerprints are L2-normalised, so inner product is cosine similarity) is the default; any FAISS
index-factory string (``"HNSW32"``, ``"IVF1024,Flat"``) gives an approximate index for large archives, with search
parameters such as ``"efSearch=64"`` or ``"nprobe=16"`` (defaults: ``DEFAULT_SEARCH_PARAMS``; see
``bench/results/index.md`` for their measured recall and speed).

Crash safety: the index file is written atomically (temporary file, fsync, rename) with a checksum, and records the
highest store ``seq`` it contains. On open, a missing, torn or foreign file is rebuilt from the store; a file that is
merely behind catches up with the rows written since (inserts and updates); a count that disagrees with the store
forces a rebuild. So nothing recorded in the store is ever missing from a search.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import Connection

from fingerprint.identity.store import VECTOR_DIM, Store

FILE_MAGIC = b"DBPFAISS1\n"
#: Trainable (IVF/PQ) indexes need this many vectors per list before training; until then the exact index is used.
TRAIN_POINTS_PER_LIST = 39
#: Training sample cap: more points make training slower without making the lists noticeably better.
MAX_TRAIN_POINTS = 200_000


@dataclass
class Neighbour:
    row_id: int
    similarity: float


@dataclass
class SyncReport:
    added: int = 0
    removed: int = 0
    rebuilt: bool = False
    reason: str = ""


def index_file_path(index_dir: Path, model_version: str) -> Path:
    """One index file per model version, so reindexing never mixes fingerprints of two models."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_version)
    return Path(index_dir) / "faiss" / f"{safe}.index"


def new_faiss_index(factory: str, dim: int = VECTOR_DIM) -> faiss.IndexIDMap2:
    """An empty inner-product index from a factory string, wrapped so that its ids are store row ids."""
    return faiss.IndexIDMap2(faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT))


#: Search parameters when the settings give none (``bench/results/index.md``: recall against exact search).
DEFAULT_SEARCH_PARAMS = (("HNSW", "efSearch=128"), ("IVF", "nprobe=32"))


def default_search_params(factory: str) -> str:
    return next((params for family, params in DEFAULT_SEARCH_PARAMS if family in factory), "")


@functools.lru_cache(maxsize=32)
def training_size(factory: str, dim: int = VECTOR_DIM) -> int:
    """How many vectors the factory needs before it can be trained; 0 when it needs no training (Flat, HNSW)."""
    probe = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if probe.is_trained:
        return 0
    try:
        return TRAIN_POINTS_PER_LIST * faiss.extract_index_ivf(probe).nlist
    except RuntimeError:
        return 10_000


class FingerprintIndex:
    """The searchable fingerprints of one model version in one archive folder."""

    def __init__(self, path: Path, model_version: str, factory: str = "Flat", search_params: str = "") -> None:
        self.path = Path(path)
        self.model_version = model_version
        self.factory = factory
        self.search_params = search_params
        self.effective_factory = "Flat"
        self.max_seq = 0
        self.index: faiss.IndexIDMap2 | None = None
        self._ids: set[int] = set()
        self.unsaved_changes = 0
        self.load_problem = ""

    @classmethod
    def open(
        cls, index_dir: Path, model_version: str, factory: str = "Flat", search_params: str = ""
    ) -> FingerprintIndex:
        """Load the index file if it is whole and matches; the first :meth:`sync` repairs or rebuilds it."""
        idx = cls(index_file_path(index_dir, model_version), model_version, factory, search_params)
        idx._load()
        return idx

    # --- persistence --------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.exists():
            self.load_problem = "index file missing"
            return
        try:
            meta, index, ids = _read_index_file(self.path)
        except (ValueError, RuntimeError, OSError, struct.error) as exc:
            self.load_problem = f"index file unreadable ({type(exc).__name__}: {exc})"
            return
        if meta.get("model_version") != self.model_version or meta.get("factory") != self.factory:
            self.load_problem = "index file built for another model version or factory"
            return
        self.index = index
        self.effective_factory = meta["effective_factory"]
        self.max_seq = int(meta["max_seq"])
        self._ids = set(ids.tolist())
        self._apply_search_params()

    def save(self) -> None:
        """Write the index atomically (temp file + fsync + rename): a crash leaves the old file or the new, whole."""
        if self.index is None:
            return
        meta = {
            "model_version": self.model_version,
            "factory": self.factory,
            "effective_factory": self.effective_factory,
            "dim": VECTOR_DIM,
            "max_seq": self.max_seq,
            "ntotal": int(self.index.ntotal),
            "saved_at": datetime.now(timezone.utc).isoformat(),
        }
        _write_index_file(self.path, meta, self.index, np.fromiter(self._ids, dtype=np.int64, count=len(self._ids)))
        self.unsaved_changes = 0

    # --- consistency with the store ----------------------------------------------------------------------------------
    def sync(self, store: Store, conn: Connection, verify_count: bool = False) -> SyncReport:
        """Catch up with rows written to the store since this index was saved or last synced (by any process)."""
        if self.index is None:
            return self.rebuild(store, conn, self.load_problem or "no index loaded")
        store_max = store.max_seq(conn)
        if self.max_seq > store_max:
            return self.rebuild(store, conn, "index is ahead of the store (store restored or replaced)")
        report = SyncReport()
        changed = list(store.changed_since(conn, self.model_version, self.max_seq))
        stale = [row_id for row_id, _, _ in changed if row_id in self._ids]
        if stale:
            try:
                self.index.remove_ids(np.asarray(stale, dtype=np.int64))
            except RuntimeError:  # e.g. HNSW cannot remove: rebuild instead
                return self.rebuild(store, conn, "updated rows in an index type without removal")
            self._ids.difference_update(stale)
            report.removed = len(stale)
        fresh = [(row_id, vector) for row_id, _, vector in changed if vector is not None]
        if fresh:
            self._add([r for r, _ in fresh], np.stack([v for _, v in fresh]))
            report.added = len(fresh)
        self.max_seq = max([store_max] + [seq for _, seq, _ in changed])
        self.unsaved_changes += report.added + report.removed
        needs = training_size(self.factory)
        if self.effective_factory != self.factory and needs and len(self._ids) >= needs:
            return self.rebuild(store, conn, f"enough vectors ({len(self._ids)}) to train {self.factory}")
        if verify_count and store.count_fingerprinted(conn, self.model_version) != self.index.ntotal:
            return self.rebuild(store, conn, "index count differs from the store")
        return report

    def rebuild(self, store: Store, conn: Connection, reason: str = "requested") -> SyncReport:
        """Build the index afresh from every fingerprint of this model version in the store."""
        store_max = store.max_seq(conn)
        ids: list[int] = []
        vectors: list[np.ndarray] = []
        for row in store.iter_vectors(conn, self.model_version):
            ids.append(row.row_id)
            vectors.append(row.vector)
            store_max = max(store_max, row.seq)
        matrix = np.stack(vectors) if vectors else np.zeros((0, VECTOR_DIM), np.float32)
        needs = training_size(self.factory)
        self.effective_factory = self.factory if len(ids) >= needs else "Flat"
        self.index = new_faiss_index(self.effective_factory)
        if not self.index.is_trained:
            sample = matrix[np.random.default_rng(0).permutation(len(matrix))[:MAX_TRAIN_POINTS]]
            self.index.train(sample)
        self._apply_search_params()
        self._ids = set()
        if ids:
            self._add(ids, matrix)
        self.max_seq = store_max
        self.save()
        return SyncReport(added=len(ids), rebuilt=True, reason=reason)

    # --- search -------------------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def add(self, row_id: int, seq: int, vector: np.ndarray) -> None:
        """Add (or replace) one row just recorded by this process under the archive lock."""
        if self.index is None:
            raise RuntimeError("sync the index with the store before adding")
        if row_id in self._ids:
            try:
                self.index.remove_ids(np.asarray([row_id], dtype=np.int64))
                self._ids.discard(row_id)
            except RuntimeError:
                self.index = None  # the next sync rebuilds from the store, which already has the new vector
                self.load_problem = "updated a row in an index type without removal"
                return
        self._add([row_id], vector.reshape(1, VECTOR_DIM))
        self.max_seq = max(self.max_seq, seq)
        self.unsaved_changes += 1

    def discard(self, row_id: int, seq: int) -> None:
        """Forget a row this process just recorded as rejected (it may have been fingerprinted before)."""
        if self.index is not None and row_id in self._ids:
            try:
                self.index.remove_ids(np.asarray([row_id], dtype=np.int64))
                self._ids.discard(row_id)
            except RuntimeError:
                self.index = None
                self.load_problem = "removed a row in an index type without removal"
                return
        self.max_seq = max(self.max_seq, seq)
        self.unsaved_changes += 1

    def search(self, vector: np.ndarray, k: int) -> list[Neighbour]:
        """The k most similar stored fingerprints (cosine similarity, best first)."""
        if self.index is None or self.index.ntotal == 0 or k <= 0:
            return []
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, VECTOR_DIM)
        sims, labels = self.index.search(query, min(k, int(self.index.ntotal)))
        return [Neighbour(int(i), float(s)) for s, i in zip(sims[0], labels[0]) if i >= 0]

    def _add(self, ids: list[int], matrix: np.ndarray) -> None:
        assert self.index is not None
        self.index.add_with_ids(np.ascontiguousarray(matrix, dtype=np.float32), np.asarray(ids, dtype=np.int64))
        self._ids.update(ids)

    def _apply_search_params(self) -> None:
        params = self.search_params or default_search_params(self.effective_factory)
        if params and self.index is not None and self.effective_factory != "Flat":
            faiss.ParameterSpace().set_index_parameters(self.index, params)


def _write_index_file(path: Path, meta: dict, index: faiss.IndexIDMap2, ids: np.ndarray) -> None:
    """MAGIC, JSON meta, the row ids, the FAISS index, then a SHA-256 of all of it; written to a temp file and renamed.

    FAISS bytes go through ``PyCallbackIOWriter`` rather than ``serialize_index``: the latter returns a SWIG
    ``std::vector<uint8_t>`` that SimpleITK's SWIG module (loaded in the same process) claims as its own type.
    The row ids are stored beside the index for the same reason (no SWIG vector needed to read them back).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    meta_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")
    ids = np.ascontiguousarray(ids, dtype="<i8")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            digest = hashlib.sha256()

            def write(chunk: bytes) -> None:
                digest.update(chunk)
                fh.write(chunk)

            write(FILE_MAGIC + struct.pack("<Q", len(meta_bytes)) + meta_bytes)
            write(struct.pack("<Q", len(ids)) + ids.tobytes())
            writer = faiss.PyCallbackIOWriter(write)
            faiss.write_index(index, writer)
            del writer
            fh.write(digest.digest())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_index_file(path: Path) -> tuple[dict, faiss.IndexIDMap2, np.ndarray]:
    data = path.read_bytes()
    body, digest = data[:-32], data[-32:]
    if not body.startswith(FILE_MAGIC) or hashlib.sha256(body).digest() != digest:
        raise ValueError("bad magic or checksum (torn or foreign file)")
    offset = len(FILE_MAGIC)
    (meta_len,) = struct.unpack_from("<Q", body, offset)
    offset += 8
    meta = json.loads(body[offset : offset + meta_len])
    offset += meta_len
    (n_ids,) = struct.unpack_from("<Q", body, offset)
    offset += 8
    ids = np.frombuffer(body, dtype="<i8", count=n_ids, offset=offset).astype(np.int64)
    offset += 8 * n_ids
    reader = faiss.PyCallbackIOReader(io.BytesIO(body[offset:]).read)
    index = faiss.read_index(reader)
    del reader
    if not isinstance(index, faiss.IndexIDMap2):
        index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexIDMap2) or index.ntotal != n_ids:
        raise ValueError(f"unexpected index ({type(index).__name__}, {index.ntotal} vectors, {n_ids} ids)")
    return meta, index, ids
