"""Training and benchmark data: a cohort's canonical slices, patient labels, splits and P×K batches.

A cohort folder holds ``cohort.csv`` (scan_id, subject_id, visit, date, base_head, split[, path]) and either
``slices.npz`` (float16 ``slices`` (N,128,128) with ``scan_id``: the generator's fast path) or, per row, a volume
``path`` (NIfTI file or DICOM series folder). Volumes go through the real slice pipeline once per slice method and
the result is cached as ``slices-<method>.npz`` (slicing ~600 volumes takes minutes; evaluating should not).

Why P×K batches: supervised NT-Xent needs other scans of the same person in the batch. ADNI batches of 64 drawn at
random contain some by chance (many visits per person); a synthetic cohort of 4 visits per subject would give
almost none, so each batch is P subjects × K of their scans (16 × 4 = 64). A deviation from the public code, which
shuffles scans.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.files import replacing
from fingerprint.parallel import ordered_map
from fingerprint.types import SLICE_SIZE

VALIDATION_SPLITS = ("val", "valid", "validation")
SLICE_CACHE = "slices.npz"


@dataclass
class SliceSet:
    """Slices (float16 (N,128,128), or (N,L,128,128) for a multi-level input) with their scan ids, integer subject
    labels and split names."""

    slices: np.ndarray
    scan_ids: np.ndarray
    subjects: np.ndarray  # subject_id strings
    splits: np.ndarray
    rejected: dict[str, dict] = field(default_factory=dict)  # scan_id -> {"rejected": code, "detail": ...}

    def __len__(self) -> int:
        return len(self.scan_ids)

    @property
    def labels(self) -> np.ndarray:
        """Subjects as integers 0..P-1 (for the loss)."""
        return np.unique(self.subjects, return_inverse=True)[1]

    def subset(self, mask: np.ndarray) -> "SliceSet":
        """The scans selected by ``mask``; the cohort's rejections (scans with no slice) are carried along."""
        return SliceSet(self.slices[mask], self.scan_ids[mask], self.subjects[mask], self.splits[mask], dict(self.rejected))


def read_cohort_csv(cohort_dir: Path) -> list[dict[str, str]]:
    path = Path(cohort_dir) / "cohort.csv"
    if not path.exists():
        raise FileNotFoundError(f"no cohort.csv in {cohort_dir}")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"scan_id", "subject_id"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path} lacks columns: {', '.join(sorted(missing))}")
    return rows


def _from_rows(rows: list[dict[str, str]], scan_ids: np.ndarray, slices: np.ndarray, rejected: dict) -> SliceSet:
    by_id = {row["scan_id"]: row for row in rows}
    keep = np.array([str(s) in by_id for s in scan_ids], dtype=bool)
    scan_ids = np.asarray([str(s) for s in scan_ids])[keep]
    return SliceSet(
        slices=slices[keep],
        scan_ids=scan_ids,
        subjects=np.asarray([by_id[s]["subject_id"] for s in scan_ids]),
        splits=np.asarray([by_id[s].get("split", "train") or "train" for s in scan_ids]),
        rejected=rejected,
    )


def load_slice_cache(cohort_dir: Path) -> SliceSet:
    """The generator's fast-path output: ``cohort.csv`` + ``slices.npz``."""
    rows = read_cohort_csv(cohort_dir)
    with np.load(Path(cohort_dir) / SLICE_CACHE, allow_pickle=False) as data:
        slices, scan_ids = data["slices"], data["scan_id"]
    if slices.ndim not in (3, 4) or slices.shape[-2:] != (SLICE_SIZE, SLICE_SIZE):
        raise ValueError(f"slices must be (N, {SLICE_SIZE}, {SLICE_SIZE}) or (N, levels, {SLICE_SIZE}, {SLICE_SIZE}), "
                         f"got {slices.shape}")
    return _from_rows(rows, scan_ids, slices.astype(np.float16, copy=False), {})


def slice_volume_file(path: Path, method: str) -> np.ndarray:
    """One benchmark volume through the real pipeline: a NIfTI file or a DICOM series folder -> (128,128)."""
    from fingerprint.imaging.pipeline import slice_series, slice_volume

    if Path(path).is_dir():
        return slice_series(Path(path), method=method).pixels
    import SimpleITK as sitk

    pixels, _geometry = slice_volume(sitk.ReadImage(str(path)), method=method)
    return pixels


def _slice_job(job: tuple[str, Path], method: str) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """(scan_id, path) -> (float16 slice, None) or (None, rejection). Module level: the entry point for pool workers."""
    from fingerprint.errors import SeriesRejected

    _scan_id, path = job
    try:
        return slice_volume_file(Path(path), method).astype(np.float16), None
    except SeriesRejected as exc:
        return None, exc.as_json()
    except (RuntimeError, OSError) as exc:  # a volume file SimpleITK cannot read: reported, not fatal
        return None, {"rejected": "unreadable_volume", "detail": str(exc).strip()[:300]}


def first_subjects(rows: list[dict[str, str]], subjects: int | None) -> list[dict[str, str]]:
    """The rows of the first ``subjects`` subjects in CSV order (all rows when None)."""
    if subjects is None:
        return rows
    keep: list[str] = []
    for row in rows:
        if row["subject_id"] not in keep and len(keep) < subjects:
            keep.append(row["subject_id"])
    chosen = set(keep)
    return [row for row in rows if row["subject_id"] in chosen]


def _read_volume_cache(cache: Path) -> tuple[list[np.ndarray], list[str], dict]:
    if not cache.exists():
        return [], [], {}
    with np.load(cache, allow_pickle=False) as data:
        return list(data["slices"]), [str(s) for s in data["scan_id"]], json.loads(str(data["rejected"]))


def _write_volume_cache(cache: Path, slices: list[np.ndarray], scan_ids: list[str], rejected: dict) -> np.ndarray:
    stack = np.stack(slices) if slices else np.zeros((0, SLICE_SIZE, SLICE_SIZE), np.float16)
    with replacing(cache) as partial:
        np.savez(partial, slices=stack, scan_id=np.asarray(scan_ids, dtype=str), rejected=json.dumps(rejected))
    return stack


def load_volume_cohort(
    cohort_dir: Path, method: str = "anatomical", cache_dir: Path | None = None, subjects: int | None = None, workers: int = 1
) -> SliceSet:
    """Slice the volumes of a cohort folder once per method; rejected volumes are reported, not fatal.

    The cache (``slices-<method>.npz``) is written every few volumes and extended on the next call, so an
    interrupted or partial run (``subjects``: only the first N subjects) is never sliced twice. ``workers`` > 1
    slices on that many processes (each alignment is single-threaded and bit-for-bit repeatable, so the cache is the
    same whatever the count); the cache keeps the CSV order.
    """
    from tqdm import tqdm

    cohort_dir = Path(cohort_dir)
    rows = first_subjects(read_cohort_csv(cohort_dir), subjects)
    if not rows or "path" not in rows[0]:
        raise ValueError(f"{cohort_dir}/cohort.csv has no 'path' column and there is no {SLICE_CACHE}")
    cache = Path(cache_dir or cohort_dir) / f"slices-{method}.npz"
    slices, scan_ids, rejected = _read_volume_cache(cache)
    done = set(scan_ids) | set(rejected)
    todo = [row for row in rows if row["scan_id"] not in done]
    jobs = [(row["scan_id"], Path(row["path"]) if Path(row["path"]).is_absolute() else cohort_dir / row["path"]) for row in todo]
    results = ordered_map(_slice_job, jobs, (method,), workers if len(jobs) > 1 else 1)
    results = tqdm(results, total=len(jobs), desc=f"slicing ({method})", unit="scan", disable=not jobs)
    for count, ((scan_id, _path), (pixels, rejection)) in enumerate(results, start=1):
        if pixels is not None:
            slices.append(pixels)
            scan_ids.append(scan_id)
        else:
            rejected[scan_id] = rejection
        if count % 20 == 0:
            _write_volume_cache(cache, slices, scan_ids, rejected)
    if todo:
        stack = _write_volume_cache(cache, slices, scan_ids, rejected)
    else:
        stack = np.stack(slices) if slices else np.zeros((0, SLICE_SIZE, SLICE_SIZE), np.float16)
    wanted = {row["scan_id"] for row in rows}
    return _from_rows(rows, np.asarray(scan_ids), stack, {k: v for k, v in rejected.items() if k in wanted})


def load_cohort(cohort_dir: Path, method: str = "anatomical", cache_dir: Path | None = None) -> SliceSet:
    """A slice cache if the folder has one, else its volumes sliced through the pipeline."""
    if (Path(cohort_dir) / SLICE_CACHE).exists():
        return load_slice_cache(cohort_dir)
    return load_volume_cohort(cohort_dir, method, cache_dir)


def train_validation_split(data: SliceSet, fraction: float = 0.1, seed: int = 0) -> tuple[SliceSet, SliceSet]:
    """The cohort's own split when it has a validation split, else a seeded patient-disjoint one."""
    is_val = np.isin(data.splits, VALIDATION_SPLITS)
    if is_val.any():
        is_train = data.splits == "train"
        return data.subset(is_train), data.subset(is_val)
    subjects = np.unique(data.subjects)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(subjects, size=max(1, round(fraction * len(subjects))), replace=False).tolist())
    is_val = np.array([s in held for s in data.subjects])
    return data.subset(~is_val), data.subset(is_val)


def pk_batches(labels: np.ndarray, batch_size: int, per_subject: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """One epoch of batches: subjects shuffled into groups of batch_size/K, up to K random scans of each.

    Subjects with a single scan are still used (Barlow Twins needs no label); a batch never repeats a scan.
    """
    by_subject: dict[int, np.ndarray] = {}
    for label in np.unique(labels):
        by_subject[int(label)] = np.flatnonzero(labels == label)
    subjects = rng.permutation(list(by_subject))
    group = max(1, batch_size // per_subject)
    for start in range(0, max(1, len(subjects) - group + 1), group):
        chosen = [
            rng.choice(by_subject[int(s)], size=min(per_subject, len(by_subject[int(s)])), replace=False)
            for s in subjects[start : start + group]
        ]
        yield np.concatenate(chosen)
