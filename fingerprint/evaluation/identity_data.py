"""Real people as labelled data for the identity decision: each scan's canonical slice and brain, and scored pairs.

Two sources, both real anatomy:

* a volume cohort of real heads (``deepbrainprint cohort generate --kind real-calibration | real-test``): simulated
  visits of real people, one subject per person;
* the real DICOM series of the shared data (``t1/`` and ``repeats/``), labelled by person: the Siemens Trio man of
  2010 and the decubitus man of 2022 are one person (shared/data/README.md gives the evidence), everyone else is
  someone else.

Each scan goes through the real pipeline once (alignment about 0.3 s CPU); its slice and canonical brain are cached as
``views/<scan_id>.npz`` beside the cohort (or in ``cache_dir`` for the shared series), so calibration and the
benchmark can be re-run at the cost of the pair checks alone. A scan the pipeline refuses is left out with its reason.
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.files import replacing, write_text
from fingerprint.identity.verification import METHOD_VERSION, SCORING_RULE, score_brain_pairs
from fingerprint.parallel import ordered_map

#: The person each real shared series shows (folder -> person), named like the base head made from that person's
#: series (``fingerprint.cohort.heads``), so a real-head cohort's simulated visits of him are the same person too.
SHARED_PEOPLE: dict[str, str] = {
    "t1/philips-elition-3t-sag-gz": "philips-elition",
    "t1/siemens-trio-3t-sag": "siemens-trio",
    "t1/siemens-skyra-3t-sag-child": "siemens-skyra-child",
    "t1/siemens-prisma-xa30-enhanced-2mm": "siemens-prisma-xa30",
    "t1/siemens-avanto-1.5t-axial-postcontrast": "siemens-avanto",
    "repeats/decubitus-HFS-t1-2d": "siemens-trio",
    "repeats/decubitus-HFP-t1-2d": "siemens-trio",
    "repeats/decubitus-HFDL-t1-2d": "siemens-trio",
    "repeats/decubitus-HFDR-t1-2d": "siemens-trio",
}
VIEWS_FOLDER = "views"


@dataclass
class ScanViews:
    """One scan's label and what the pipeline made of it."""

    scan_id: str
    person: str
    slice: np.ndarray  # float16 (128, 128)
    brain: np.ndarray  # uint8 canonical brain
    seconds: float = 0.0


@dataclass
class ViewSet:
    """The scans of one source, in a fixed order, and the ones the pipeline refused."""

    scans: list[ScanViews]
    rejected: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def people(self) -> np.ndarray:
        return np.asarray([s.person for s in self.scans])

    @property
    def slices(self) -> np.ndarray:
        return np.stack([s.slice.astype(np.float32) for s in self.scans])

    def __add__(self, other: ViewSet) -> ViewSet:
        return ViewSet([*self.scans, *other.scans], {**self.rejected, **other.rejected})


def views_cache(cohort_dir: Path) -> Path:
    """Where a cohort's scan views and pair scores are cached."""
    return Path(cohort_dir) / VIEWS_FOLDER


def cohort_views(cohort_dir: Path, workers: int = 1, split: str | None = None) -> ViewSet:
    """Every scan of a volume cohort (``cohort.csv`` with ``path``). The person is the subject; in a real-head
    cohort (kind ``real-*``) it is the person the base head shows (:func:`fingerprint.cohort.heads.person_of`: two
    files can show one person), named as :data:`SHARED_PEOPLE` names the shared series."""
    from fingerprint.cohort.heads import person_of

    cohort_dir = Path(cohort_dir)
    with open(cohort_dir / "cohort.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("path") and (split is None or r.get("split") == split)]
    manifest = cohort_dir / "cohort.json"
    real = manifest.exists() and str(json.loads(manifest.read_text()).get("kind", "")).startswith("real-")

    def person(row: dict[str, str]) -> str:
        return person_of(row["base_head"]) if real and row.get("base_head") else row["subject_id"]

    jobs = [(r["scan_id"], person(r), str(cohort_dir / r["path"])) for r in rows]
    return _views(jobs, views_cache(cohort_dir), workers)


def shared_views(shared_data: Path, cache_dir: Path, workers: int = 1) -> ViewSet:
    """The real DICOM series of the shared data that are present, labelled by person (:data:`SHARED_PEOPLE`)."""
    jobs = [
        (folder.replace("/", "--"), person, str(Path(shared_data) / folder))
        for folder, person in SHARED_PEOPLE.items()
        if (Path(shared_data) / folder).is_dir()
    ]
    return _views(jobs, Path(cache_dir), workers)


def _views(jobs: list[tuple[str, str, str]], cache: Path, workers: int) -> ViewSet:
    cache.mkdir(parents=True, exist_ok=True)
    scans: list[ScanViews] = []
    rejected: dict[str, dict[str, str]] = {}
    for (scan_id, person, _path), outcome in ordered_map(_view_job, jobs, (str(cache),), workers):
        if "rejected" in outcome:
            rejected[scan_id] = outcome
        else:
            scans.append(ScanViews(scan_id, person, outcome["slice"], outcome["brain"], outcome["seconds"]))
    return ViewSet(scans, rejected)


def _save_atomically(path: Path, **arrays: Any) -> None:
    """``np.savez`` replacing ``path`` whole: a reader (another process evaluating the same scans) sees the whole
    cache file or none (:func:`fingerprint.files.replacing`)."""
    with replacing(path) as partial:
        np.savez(partial, **arrays)


def _view_job(job: tuple[str, str, str], cache: str) -> dict[str, Any]:
    """One scan through the pipeline (or its cached result). Module level: the entry point for pool workers."""
    scan_id, _person, path = job
    cached = Path(cache) / f"{scan_id}.npz"
    if cached.exists():
        with np.load(cached, allow_pickle=False) as data:
            if str(data["method_version"]) == METHOD_VERSION:
                if "rejected" in data.files:
                    return json.loads(str(data["rejected"]))
                return {"slice": data["slice"], "brain": data["brain"], "seconds": float(data["seconds"])}
    import SimpleITK as sitk

    from fingerprint.errors import SeriesRejected
    from fingerprint.imaging.dicom_read import read_series
    from fingerprint.imaging.pipeline import canonical_views

    started = time.perf_counter()
    try:
        image = read_series(Path(path)).image if Path(path).is_dir() else sitk.ReadImage(path)
        pixels, _geometry, brain = canonical_views(image)
    except SeriesRejected as exc:
        outcome: dict[str, Any] = exc.as_json()
        _save_atomically(cached, method_version=METHOD_VERSION, rejected=json.dumps(outcome))
        return outcome
    seconds = time.perf_counter() - started
    _save_atomically(cached, method_version=METHOD_VERSION, slice=pixels.astype(np.float16), brain=brain, seconds=seconds)
    return {"slice": pixels.astype(np.float16), "brain": brain, "seconds": seconds}


# --- pairs ---------------------------------------------------------------------------------------------------------
@dataclass
class PairScores:
    """Verification scores of scan pairs (i < j indices into a ViewSet), and the CPU seconds each took."""

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray  # NaN where the pair shared too little brain to score
    same: np.ndarray  # bool
    seconds: np.ndarray

    def as_matrix(self, n: int) -> np.ndarray:
        """Symmetric (n, n) matrix of scores; NaN where no pair was scored, 1 on the diagonal."""
        matrix = np.full((n, n), np.nan)
        matrix[self.i, self.j] = self.score
        matrix[self.j, self.i] = self.score
        np.fill_diagonal(matrix, 1.0)
        return matrix


def all_pairs(views: ViewSet) -> list[tuple[int, int]]:
    """Every pair of scans."""
    return list(itertools.combinations(range(len(views.scans)), 2))


def score_pairs(
    views: ViewSet,
    pairs: Iterable[tuple[int, int]],
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    cache: Path | None = None,
) -> PairScores:
    """Verify each pair (first scan fixed, second registered onto it) on ``workers`` processes.

    ``cache``: a folder where scores are kept by scan ids and method version, so a re-run verifies only new pairs.
    """
    pairs = list(pairs)
    ids = [s.scan_id for s in views.scans]
    known = _read_pair_cache(cache)
    results: dict[tuple[int, int], tuple[float, float]] = {
        p: known[(ids[p[0]], ids[p[1]])] for p in pairs if (ids[p[0]], ids[p[1]]) in known
    }
    todo = [p for p in pairs if p not in results]
    brains = [s.brain for s in views.scans]
    for pair, (score, seconds) in zip(todo, score_brain_pairs(brains, todo, workers, progress)):
        results[pair] = (np.nan if score is None else score, seconds)
    if cache is not None and todo:
        known.update({(ids[a], ids[b]): value for (a, b), value in results.items()})
        _write_pair_cache(cache, known)
    people = views.people
    ordered = [p for p in pairs if p in results]
    i = np.asarray([p[0] for p in ordered], dtype=int)
    j = np.asarray([p[1] for p in ordered], dtype=int)
    return PairScores(
        i=i,
        j=j,
        score=np.asarray([results[p][0] for p in ordered], dtype=np.float64),
        same=people[i] == people[j] if len(ordered) else np.zeros(0, bool),
        seconds=np.asarray([results[p][1] for p in ordered], dtype=np.float64),
    )


def _pair_cache_file(cache: Path) -> Path:
    return Path(cache) / f"pairs-{METHOD_VERSION}-rule{SCORING_RULE}.json"


def _read_pair_cache(cache: Path | None) -> dict[tuple[str, str], tuple[float, float]]:
    if cache is None or not _pair_cache_file(cache).exists():
        return {}
    entries = json.loads(_pair_cache_file(cache).read_text())
    return {(a, b): (float("nan") if score is None else score, seconds) for a, b, score, seconds in entries}


def _write_pair_cache(cache: Path, known: dict[tuple[str, str], tuple[float, float]]) -> None:
    entries = [[a, b, None if not np.isfinite(v[0]) else v[0], v[1]] for (a, b), v in sorted(known.items())]
    write_text(_pair_cache_file(cache), json.dumps(entries))
