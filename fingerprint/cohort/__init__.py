"""Synthetic longitudinal cohort from real heads: the training set (fast path) and the benchmark (full path).

Heads and the split (quoted by the model card): subjects for training, validation and calibration are built only
from the TRAINING heads (MNI152 average, philips-elition, siemens-skyra-child, siemens-prisma-xa30, siemens-avanto);
the benchmark's subjects only from the HELD-OUT heads (Colin27, siemens-trio), with their own seeds. The real-head
cohorts (kinds ``real-calibration`` / ``real-test``) are real people as they are, split by REAL_CALIBRATION_HEADS and
REAL_TEST_HEADS. See
:mod:`fingerprint.cohort.heads` (base heads), :mod:`~fingerprint.cohort.deform` (subject anatomy and ageing),
:mod:`~fingerprint.cohort.appearance` (scanner contrast, bias, noise, resolution), :mod:`~fingerprint.cohort.visits`
(the seeded plan), :mod:`~fingerprint.cohort.training_set` (slices) and :mod:`~fingerprint.cohort.benchmark`
(volumes in scanner space, and the measurement of the pipeline's alignment error).

Why the head lists are imported lazily: :mod:`fingerprint.parallel` serves training too, and training runs
where SimpleITK may be absent (a GPU machine with only torch); importing the heads here would pull SimpleITK into
every ``import fingerprint.model.training``.
"""

from typing import Any

__all__ = ["HELD_OUT_HEADS", "REAL_CALIBRATION_HEADS", "REAL_TEST_HEADS", "TRAINING_HEADS"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fingerprint.cohort import heads

        return getattr(heads, name)
    raise AttributeError(f"module 'fingerprint.cohort' has no attribute {name!r}")
