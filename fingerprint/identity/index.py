"""The FAISS index of one model version's fingerprints: a disposable, always-rebuildable cache of the store.

Vector ids are the store's row ids (``IndexIDMap2``), so a search answers directly with rows. Fingerprints are
L2-normalised, so inner product is cosine similarity. The factory setting chooses the index:

* ``"auto"`` (the default): exact search (``Flat``) while the archive holds at most ``AUTO_EXACT_UP_TO``
  fingerprints, where it answers within 10 ms; above that, the approximate ``AUTO_APPROXIMATE_FACTORY`` with
  ``AUTO_SEARCH_PARAMS`` (``bench/results/index.md``: their measured speed and recall at 1M).
* ``"Flat"``: always exact.
* any other FAISS index-factory string (``"HNSW32"``, ``"IVF1024,Flat"``, ``"HNSW48_SQ8"``): that approximate index,
  with search parameters such as ``"efSearch=64"``, ``"nprobe=16"`` or ``"k_factor_rf=8"`` (defaults:
  ``DEFAULT_SEARCH_PARAMS``).

An approximate index searches the model's *search transform* space (``fingerprint.identity.whitening``: centred,
rotated onto principal axes, fewer dimensions; stored beside the model's weights) only to find ``k * k_factor``
candidates, then re-ranks them exactly by raw inner product against the raw fingerprints it keeps (``IndexRefine``
over a ``Flat`` index). So the similarities a verdict sees are the raw cosine similarities its thresholds were
calibrated on, bit for bit what exact search answers, whatever the index type; the index choice can only change
*which* stored series are found, never their scores. Without a stored transform for the model version the approximate
index searches the raw space (still re-ranked exactly). The compressed option ``"HNSW32_SQ8,Refine(SQfp16)"`` keeps
8-bit graph vectors and float16 raw vectors instead: half the memory, similarities within float16's rounding.

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
import re
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import Connection

from fingerprint.files import replacing
from fingerprint.identity.store import VECTOR_DIM, Store
from fingerprint.identity.whitening import SearchTransform, resolve_search_transform

FILE_MAGIC = b"DBPFAISS1\n"
#: Trainable (IVF/PQ) indexes need this many vectors per list before training; until then the exact index is used.
TRAIN_POINTS_PER_LIST = 39
#: Training sample cap: more points make training slower without making the lists noticeably better.
MAX_TRAIN_POINTS = 200_000

#: The factory setting that picks exact or approximate search by archive size.
AUTO = "auto"
#: ``"auto"``: exact search up to this many fingerprints (``bench/results/index.md``: exact stays under 10 ms).
AUTO_EXACT_UP_TO = 50_000
#: ``"auto"``: the approximate index above ``AUTO_EXACT_UP_TO`` and its search parameters (measured at 1M). The graph
#: keeps its vectors in 8 bits (``_SQ8``): a quarter of the bytes read per distance, and the candidates are re-ranked
#: exactly anyway, so it answers faster at the same recall than float32 graph vectors. 48 links per node (HNSW's M)
#: rather than 32: each hop costs more distances, but the same recall needs a much shallower search (efSearch 128
#: instead of 256) in this narrow cone, and 64 links gained nothing more (``bench/results/index_variants.md``, same
#: data and run).
AUTO_APPROXIMATE_FACTORY = "HNSW48_SQ8"
AUTO_SEARCH_PARAMS = "efSearch=128,k_factor_rf=16"
#: Other HNSW graphs (fewer links: ``"HNSW32"``, the auto index before ``HNSW48_SQ8``) need the deeper search.
HNSW_SEARCH_PARAMS = "efSearch=256,k_factor_rf=16"
#: HNSW graph construction depth: deeper builds a better graph, slower (``bench/results/index.md``).
HNSW_EF_CONSTRUCTION = 64
#: Candidates fetched from the approximate index per neighbour asked for, then re-ranked exactly.
DEFAULT_K_FACTOR = 16


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


def new_faiss_index(
    factory: str, dim: int = VECTOR_DIM, transform: SearchTransform | None = None
) -> faiss.IndexIDMap2:
    """An empty index from a factory string, wrapped so that its ids are store row ids.

    ``"Flat"`` is exact inner product over the raw fingerprints. Any other factory is built in the search transform's
    space (when one is given) behind an ``IndexPreTransform``, and wrapped in an ``IndexRefineFlat`` that keeps the
    raw fingerprints and re-ranks the candidates by exact raw inner product: the similarities it answers with are
    the raw ones, whatever the factory.
    """
    if factory == "Flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    search_factory, refine_factory = split_refine(factory)
    # Centred (and rotated) fingerprints are compared by L2 distance, which centring and rotation leave as it was in
    # the raw space, where on unit vectors it orders exactly as inner product does; raw vectors by inner product.
    metric = faiss.METRIC_L2 if transform is not None else faiss.METRIC_INNER_PRODUCT
    inner = faiss.index_factory(transform.d_out if transform is not None else dim, search_factory, metric)
    hnsw = _hnsw_of(inner)
    if hnsw is not None:
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return wrap_search_index(inner, dim, transform, refine_factory)


def wrap_search_index(
    inner: faiss.Index, dim: int = VECTOR_DIM, transform: SearchTransform | None = None, refine_factory: str = "Flat"
) -> faiss.IndexIDMap2:
    """``inner`` (an approximate index in the transform's space, compared by L2 when a transform is given) as the
    archive searches it: behind the transform, its candidates re-ranked by exact raw inner product, ids as row ids.
    :func:`new_faiss_index` builds ``inner`` from a factory string; benchmarks pass indexes no factory string names.
    """
    metric = faiss.METRIC_L2 if transform is not None else faiss.METRIC_INNER_PRODUCT
    if transform is not None:
        inner = faiss.IndexPreTransform(transform.pca, inner)
    refine = faiss.index_factory(dim, refine_factory, metric)
    refined = faiss.IndexRefine(inner, refine)
    # FAISS's IndexRefine wants one metric for both halves; the candidates' metric only chose them, the re-rank (its
    # distances and their order) is raw inner product: the similarity the verdict's thresholds were calibrated on.
    refine.metric_type = refined.metric_type = faiss.METRIC_INNER_PRODUCT
    refined.k_factor = DEFAULT_K_FACTOR
    return faiss.IndexIDMap2(refined)


def split_refine(factory: str) -> tuple[str, str]:
    """``"HNSW32_SQ8,Refine(SQfp16)"`` -> ``("HNSW32_SQ8", "SQfp16")``: the search index (in the transform's space) and
    the raw-space re-rank index (FAISS's own ``Refine(...)`` suffix; ``Flat``, exact, when none is given)."""
    match = re.fullmatch(r"(.+),Refine\((.+)\)", factory)
    return (match.group(1), match.group(2)) if match else (factory, "Flat")


def _hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    """The HNSW index inside ``index`` (itself, or behind a pre-transform), if it is one."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index if isinstance(index, faiss.IndexHNSW) else None


#: Search parameters when the settings give none, by the first family the factory string contains
#: (``bench/results/index.md``: recall against exact search).
DEFAULT_SEARCH_PARAMS = (
    (AUTO_APPROXIMATE_FACTORY, AUTO_SEARCH_PARAMS),
    ("HNSW", HNSW_SEARCH_PARAMS),
    ("IVF", "nprobe=32,k_factor_rf=8"),
)


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


def planned_factory(factory: str, count: int) -> str:
    """The factory an index of ``count`` fingerprints is built with: ``"auto"`` picks exact search up to
    ``AUTO_EXACT_UP_TO`` and the approximate index above it; a trainable factory waits (exact) for enough data."""
    if factory == AUTO:
        return "Flat" if count <= AUTO_EXACT_UP_TO else AUTO_APPROXIMATE_FACTORY
    if factory == "Flat":
        return factory
    return factory if count >= training_size(factory) else "Flat"


class FingerprintIndex:
    """The searchable fingerprints of one model version in one archive folder."""

    def __init__(
        self,
        path: Path,
        model_version: str,
        factory: str = AUTO,
        search_params: str = "",
        transform: SearchTransform | None = None,
    ) -> None:
        self.path = Path(path)
        self.model_version = model_version
        self.factory = factory
        self.search_params = search_params
        self.transform = transform
        self.effective_factory = "Flat"
        self.max_seq = 0
        self.index: faiss.IndexIDMap2 | None = None
        self._ids: set[int] = set()
        self.unsaved_changes = 0
        self.load_problem = ""
        self.transform_problem = ""

    @classmethod
    def open(
        cls,
        index_dir: Path,
        model_version: str,
        factory: str = AUTO,
        search_params: str = "",
        model_dir: Path | None = None,
    ) -> FingerprintIndex:
        """Load the index file if it is whole and matches; the first :meth:`sync` repairs or rebuilds it.

        An approximate (or ``"auto"``) factory uses the search transform stored beside the model's weights in
        ``model_dir`` (None: the shipped weights) when there is one for this model version."""
        transform, problem = None, ""
        if factory != "Flat":
            try:
                transform = resolve_search_transform(model_version, model_dir)
            except ValueError as exc:  # a damaged transform file: search the raw space (slower, still exact scores)
                problem = f"search transform unusable ({exc})"
        idx = cls(index_file_path(index_dir, model_version), model_version, factory, search_params, transform)
        idx.transform_problem = problem
        idx._load()
        return idx

    @property
    def transform_sha256(self) -> str:
        """Which search transform an approximate index of this object is built with ("" for none)."""
        return str(self.transform.meta.get("sha256", "")) if self.transform is not None else ""

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
        if meta["effective_factory"] != "Flat" and meta.get("transform", "") != self.transform_sha256:
            self.load_problem = "index file built with another search transform"
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
            "transform": self.transform_sha256 if self.effective_factory != "Flat" else "",
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
        planned = planned_factory(self.factory, len(self._ids))
        if self.effective_factory == "Flat" and planned != "Flat":
            return self.rebuild(store, conn, f"{len(self._ids)} vectors: {planned} from now on")
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
        self.effective_factory = planned_factory(self.factory, len(ids))
        self.index = new_faiss_index(self.effective_factory, transform=self.transform)
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
        ntotal = int(self.index.ntotal)
        k = min(k, ntotal)
        params = None
        refine = faiss.downcast_index(self.index.index) if self.effective_factory != "Flat" else None
        if isinstance(refine, faiss.IndexRefine) and k * refine.k_factor > ntotal:
            # never ask the candidates' index for more than it holds: its empty slots would outrank real neighbours
            params = faiss.IndexRefineSearchParameters(k_factor=float(max(1, ntotal // k)))
        sims, labels = self.index.search(query, k, params=params)
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
    """MAGIC, JSON meta, the row ids, the FAISS index, then a SHA-256 of all of it; replaced whole and durably
    (:func:`fingerprint.files.replacing`).

    FAISS bytes go through ``PyCallbackIOWriter`` rather than ``serialize_index``: the latter returns a SWIG
    ``std::vector<uint8_t>`` that SimpleITK's SWIG module (loaded in the same process) claims as its own type.
    The row ids are stored beside the index for the same reason (no SWIG vector needed to read them back).
    """
    meta_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")
    ids = np.ascontiguousarray(ids, dtype="<i8")
    with replacing(path, durable=True) as partial, open(partial, "wb") as fh:
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
