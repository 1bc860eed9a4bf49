"""Who is in a cohort and what happens at each visit: the seeded plan shared by the training set and the benchmark.

Reproducibility: subject ``k`` of a kind and seed is drawn from ``SeedSequence([seed, kind, k])`` and its visit ``v``
from ``SeedSequence([seed, kind, k, 1 + v])``, so any subject or visit can be rebuilt alone, in any order, by any
number of workers, and changing the number of subjects or visits does not change the ones already there.

Kinds and splits (subjects are never shared between splits: a subject belongs to exactly one):

- ``train``: training heads only (see :mod:`fingerprint.cohort.heads`); one subject in ten goes to the ``val`` split
  (patient-disjoint validation for early stopping), the rest to ``train``. With the head set ``real-calibration``
  (:data:`TRAIN_HEAD_SETS`) the subjects are warps of the real calibration people instead, in a seed space of their
  own; the default head set plans exactly as before;
- ``benchmark``: held-out heads only (Colin27, siemens-trio), split ``test``, its own seed space (default seed
  :data:`BENCHMARK_SEED`), so neither its anatomy nor its deformations are ever seen in training;
- ``calibration``: training heads, split ``calibration``, other seeds: for threshold calibration;
- ``real-calibration`` / ``real-test``: real people, not warps: ONE subject per real head of
  :data:`~fingerprint.cohort.heads.REAL_CALIBRATION_HEADS` (``rc-<head>``, split ``calibration``) or
  :data:`~fingerprint.cohort.heads.REAL_TEST_HEADS` (``rt-<head>``, split ``test``). The anatomy is the head itself
  with a mild ageing (:func:`~fingerprint.cohort.deform.real_person_anatomy`); each visit is drawn as the benchmark's
  are, and about :data:`THICK_2D_SHARE` of them become a thick 2D series (:func:`thick_2d_protocol`), as real archives
  hold. Their extra draws use seed streams of their own, so the other kinds' plans are exactly what they were.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from fingerprint.cohort.appearance import Appearance, random_appearance
from fingerprint.cohort.deform import (
    SubjectAnatomy,
    random_subject,
    real_person_anatomy,
    rigid_transform,
)
from fingerprint.cohort.heads import (
    HELD_OUT_HEADS,
    REAL_CALIBRATION_HEADS,
    REAL_TEST_HEADS,
    TRAINING_HEADS,
)

KIND_CODES = {"train": 11, "benchmark": 23, "calibration": 37, "real-calibration": 41, "real-test": 43}
BENCHMARK_SEED = 20230227  # the paper's arXiv date: everyone's benchmark is this one unless told otherwise
PLANES = ("axial", "sagittal", "coronal", "oblique")
#: Real-head kinds: (subject id prefix, split, heads); one subject per head.
REAL_KINDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "real-calibration": ("rc", "calibration", REAL_CALIBRATION_HEADS),
    "real-test": ("rt", "test", REAL_TEST_HEADS),
}
#: Share of real-head visits acquired as a thick 2D series, and that protocol's planes, slice and pixel sizes (mm).
THICK_2D_SHARE = 0.25
THICK_2D_PLANES = ("sagittal", "axial")
THICK_2D_SLICE_MM = (4.0, 5.0)
THICK_2D_PIXEL_MM = (0.9, 1.0)
#: Seed streams appended to a visit's entropy (7: noise, 13: alignment failure, 17: real-head protocol).
PROTOCOL_STREAM = 17
#: Base heads a ``train`` cohort's subjects may be warps of: (subject id prefix, seed code, heads). ``training``
#: (the default) is the synthetic-training split as it always was (same ids, same draws); ``real-calibration`` makes
#: every training subject a warp of one of the 26 real people of REAL_CALIBRATION_HEADS (never REAL_TEST_HEADS),
#: with a seed code and id prefix of its own, so its subjects are new people and never collide with the default's.
DEFAULT_HEAD_SET = "training"
TRAIN_HEAD_SETS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    DEFAULT_HEAD_SET: ("tr", KIND_CODES["train"], TRAINING_HEADS),
    "real-calibration": ("trc", 47, REAL_CALIBRATION_HEADS),
}



@dataclass(frozen=True)
class ResidualModel:
    """The slice pipeline's residual alignment error that the fast path mimics (standard deviations per axis).

    Where the alignment works, the residual is mostly a per-*subject* offset (the best rigid fit of a deformed head
    differs from the identity: ~3 deg, ~3 mm between subjects) plus a small visit-to-visit spread. The defaults are
    the pipeline with dense coarse sampling (2026-11-25, :mod:`fingerprint.imaging.canonical`), measured on 30 benchmark
    subjects x 3 visits: within a subject the tilt varies by 2.2 deg and the level by 1.1 mm at the 90th percentile,
    at most 5 deg / 4 mm. The visit spread is set a little wider than measured and 5 % of visits get a larger pitch
    and shift error, so the model also tolerates heads that align worse than the two benchmark heads.
    :data:`COARSE_SAMPLING_RESIDUAL` is the model measured on the earlier pipeline (5 % sampling at 8 mm), where a
    quarter of the Siemens-Trio volumes were misaligned by 8-27 deg in pitch with 8-20 mm level errors.
    """

    visit_rotation_sd_deg: float = 1.2
    visit_shift_sd_mm: float = 1.0
    subject_rotation_sd_deg: float = 2.5
    subject_shift_sd_mm: float = 2.5
    failure_probability: float = 0.05
    failure_pitch_sd_deg: float = 4.0
    failure_shift_sd_mm: float = 3.0


MEASURED_RESIDUAL = ResidualModel()
#: The earlier pipeline's residual (12 benchmark subjects; failures at 10 %, 10 deg / 6 mm).
COARSE_SAMPLING_RESIDUAL = ResidualModel(1.0, 1.0, 2.5, 2.5, 0.1, 10.0, 6.0)
#: What the first training set (cohorts/train, 06:44 UTC) was made with: independent per visit, no subject offset.
FIRST_RESIDUAL = ResidualModel(1.5, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0)
RESIDUAL_MODELS = {"measured": MEASURED_RESIDUAL, "coarse-sampling": COARSE_SAMPLING_RESIDUAL, "first": FIRST_RESIDUAL}


@dataclass(frozen=True)
class SubjectPlan:
    """One subject of a cohort: its id, base head, split, and the seed its anatomy is drawn from."""

    subject_id: str
    index: int
    base_head: str
    split: str
    seed_entropy: tuple[int, ...]
    real_person: bool = False  # True: the base head as it is (no warp), for the real-head kinds
    thick_2d_share: float = THICK_2D_SHARE  # real-head kinds: share of visits acquired as a thick 2D series

    def anatomy(self) -> SubjectAnatomy:
        """This subject's anatomy (deterministic: drawn from the subject's own seed)."""
        rng = np.random.default_rng(np.random.SeedSequence(list(self.seed_entropy)))
        return real_person_anatomy(self.base_head, rng) if self.real_person else random_subject(self.base_head, rng)


@dataclass(frozen=True)
class VisitPlan:
    """One visit: when, how the scanner made it look, where the head lay, and the pipeline's residual error."""

    scan_id: str
    visit: int
    date: dt.date
    years: float
    appearance: Appearance
    pose_angles_deg: tuple[float, float, float]
    pose_shift_mm: tuple[float, float, float]
    plane: str
    oblique_deg: float
    fov_mm: float
    coverage_mm: float
    fov_offset_mm: tuple[float, float, float]
    residual_angles_deg: tuple[float, float, float]
    residual_shift_mm: tuple[float, float, float]
    seed_entropy: tuple[int, ...]

    def rng(self) -> np.random.Generator:
        """A generator for this visit's noise (separate from the one its parameters were drawn from)."""
        return np.random.default_rng(np.random.SeedSequence([*self.seed_entropy, 7]))


def plan_subjects(
    kind: str, subjects: int, seed: int, head_set: str = DEFAULT_HEAD_SET, thick_2d_share: float = THICK_2D_SHARE
) -> list[SubjectPlan]:
    """The subjects of a cohort of ``kind`` (see :data:`KIND_CODES`), in index order; a real-head kind has at most
    one subject per real head, so ``subjects`` is capped there. ``head_set`` (train only, see
    :data:`TRAIN_HEAD_SETS`) picks the base heads the training subjects are warps of; ``thick_2d_share`` (real-head
    kinds) how many visits the site acquires as thick 2D series (another site's scanner settings)."""
    if kind not in KIND_CODES:
        raise ValueError(f"unknown cohort kind {kind!r}; use one of {', '.join(KIND_CODES)}")
    if head_set not in TRAIN_HEAD_SETS:
        raise ValueError(f"unknown head set {head_set!r}; use one of {', '.join(TRAIN_HEAD_SETS)}")
    if head_set != DEFAULT_HEAD_SET and kind != "train":
        raise ValueError(f"head set {head_set!r} is for the train kind only, not {kind!r}")
    if kind in REAL_KINDS:
        return _real_subjects(kind, subjects, seed, thick_2d_share)
    if kind == "train":
        prefix, code, heads = TRAIN_HEAD_SETS[head_set]
    else:
        prefix, code = {"benchmark": "bm", "calibration": "ca"}[kind], KIND_CODES[kind]
        heads = HELD_OUT_HEADS if kind == "benchmark" else TRAINING_HEADS
    plans = []
    for k in range(subjects):
        if kind == "train":
            split = "val" if (k // len(heads)) % 10 == 9 else "train"
        else:
            split = "test" if kind == "benchmark" else "calibration"
        plans.append(SubjectPlan(f"{prefix}{seed}-{k:05d}", k, heads[k % len(heads)], split, (seed, code, k)))
    return plans


def _real_subjects(kind: str, subjects: int, seed: int, thick_2d_share: float = THICK_2D_SHARE) -> list[SubjectPlan]:
    """One subject per real head of a real-head kind, its id naming the person (the same person under any seed)."""
    prefix, split, heads = REAL_KINDS[kind]
    return [
        SubjectPlan(f"{prefix}-{head}", k, head, split, (seed, KIND_CODES[kind], k), True, thick_2d_share)
        for k, head in enumerate(heads[:subjects])
    ]


def plan_visits(subject: SubjectPlan, visits: int, residual: ResidualModel = MEASURED_RESIDUAL) -> list[VisitPlan]:
    """The visits of one subject: dates 0.5-3 years apart from a baseline in 2008-2022, each with its own scanner."""
    rng = np.random.default_rng(np.random.SeedSequence([*subject.seed_entropy, 0]))
    offset_rng = np.random.default_rng(np.random.SeedSequence([*subject.seed_entropy, 99]))
    subject_offset = (
        offset_rng.standard_normal(3) * residual.subject_rotation_sd_deg,
        offset_rng.standard_normal(3) * residual.subject_shift_sd_mm,
    )
    baseline = dt.date(2008, 1, 1) + dt.timedelta(days=int(rng.integers(0, 15 * 365)))
    gaps = [0] + [int(rng.integers(180, 3 * 365)) for _ in range(visits - 1)]
    plans = []
    days = 0
    for v in range(visits):
        days += gaps[v]
        entropy = (*subject.seed_entropy, 1 + v)
        visit = _visit(subject.subject_id, v, baseline, days, np.random.default_rng(np.random.SeedSequence(list(entropy))), entropy, residual)
        visit = _with_residual_offsets(visit, residual, subject_offset)
        plans.append(_with_real_protocol(visit, subject.thick_2d_share) if subject.real_person else visit)
    return plans


def _with_real_protocol(visit: VisitPlan, share: float = THICK_2D_SHARE) -> VisitPlan:
    """Now and then (``share``) turn a real head's visit into a thick 2D series, from its own seed stream."""
    rng = np.random.default_rng(np.random.SeedSequence([*visit.seed_entropy, PROTOCOL_STREAM]))
    return thick_2d_protocol(visit, rng) if rng.random() < share else visit


def thick_2d_protocol(visit: VisitPlan, rng: np.random.Generator) -> VisitPlan:
    """The visit as a clinical 2D series: sagittal or axial, 4-5 mm slices, ~1 mm pixels (like shared/data/repeats)."""
    appearance = dataclasses.replace(
        visit.appearance,
        pixel_mm=float(rng.uniform(*THICK_2D_PIXEL_MM)),
        thickness_mm=float(rng.uniform(*THICK_2D_SLICE_MM)),
    )
    plane = str(rng.choice(THICK_2D_PLANES))
    return dataclasses.replace(
        visit, appearance=appearance, plane=plane, oblique_deg=0.0, coverage_mm=float(rng.uniform(150.0, 180.0))
    )


def is_thick_2d(visit: VisitPlan) -> bool:
    """Whether a visit is a thick-slice 2D series (slices at least THICK_2D_SLICE_MM[0] thick)."""
    return visit.appearance.thickness_mm >= THICK_2D_SLICE_MM[0]


def _with_residual_offsets(visit: VisitPlan, model: ResidualModel, subject_offset: tuple[np.ndarray, np.ndarray]) -> VisitPlan:
    """Add the subject's systematic residual and, now and then, an alignment failure (own random stream each, so a
    model without them reproduces the visit draws exactly)."""
    angles = np.asarray(visit.residual_angles_deg) + subject_offset[0]
    shift = np.asarray(visit.residual_shift_mm) + subject_offset[1]
    failure_rng = np.random.default_rng(np.random.SeedSequence([*visit.seed_entropy, 13]))
    if failure_rng.random() < model.failure_probability:
        angles[0] += failure_rng.standard_normal() * model.failure_pitch_sd_deg
        shift += failure_rng.standard_normal(3) * model.failure_shift_sd_mm
    return dataclasses.replace(
        visit, residual_angles_deg=tuple(float(a) for a in angles), residual_shift_mm=tuple(float(t) for t in shift)
    )


def _visit(
    subject_id: str, v: int, baseline: dt.date, days: int, rng: np.random.Generator, entropy: tuple[int, ...], model: ResidualModel
) -> VisitPlan:
    plane = str(rng.choice(PLANES, p=[0.35, 0.35, 0.15, 0.15]))
    return VisitPlan(
        scan_id=f"{subject_id}-v{v}",
        visit=v,
        date=baseline + dt.timedelta(days=days),
        years=days / 365.25,
        appearance=random_appearance(rng),
        pose_angles_deg=tuple(float(a) for a in rng.uniform(-15.0, 15.0, size=3)),  # type: ignore[arg-type]
        pose_shift_mm=tuple(float(s) for s in rng.uniform(-20.0, 20.0, size=3)),  # type: ignore[arg-type]
        plane=plane,
        oblique_deg=float(rng.uniform(10.0, 25.0) * rng.choice([-1, 1])) if plane == "oblique" else 0.0,
        fov_mm=float(rng.uniform(200.0, 230.0)),
        coverage_mm=float(rng.uniform(150.0, 180.0)) + (40.0 if plane == "coronal" else 0.0),  # coronal: head length
        fov_offset_mm=tuple(float(s) for s in rng.uniform(-10.0, 10.0, size=3)),  # type: ignore[arg-type]
        residual_angles_deg=tuple(float(a) for a in rng.normal(0.0, model.visit_rotation_sd_deg, size=3)),  # type: ignore[arg-type]
        residual_shift_mm=tuple(float(s) for s in rng.normal(0.0, model.visit_shift_sd_mm, size=3)),  # type: ignore[arg-type]
        seed_entropy=entropy,
    )


def scanner_direction(visit: VisitPlan) -> np.ndarray:
    """The acquisition's direction matrix in scanner coordinates (columns: row, column, slice-normal directions)."""
    columns = {  # DICOM conventions in LPS: (row direction, column direction, normal = row x column)
        "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
        "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)),
        "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
        "oblique": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    }[visit.plane]
    base = np.array(columns).T
    if visit.plane == "oblique":  # an axial plane tilted about the left-right axis (AC-PC style angulation)
        a = np.deg2rad(visit.oblique_deg)
        base = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]]) @ base
    return base


def pose_transform(visit: VisitPlan) -> sitk.Euler3DTransform:
    """Where the head lay: maps scanner points to subject-space points (rotation up to 15 deg, shift up to 20 mm)."""
    return rigid_transform(visit.pose_angles_deg, visit.pose_shift_mm)


def residual_transform(visit: VisitPlan) -> sitk.Euler3DTransform:
    """The pipeline's alignment error for this visit (fast path): maps reference points to subject-space points."""
    return rigid_transform(visit.residual_angles_deg, visit.residual_shift_mm)
