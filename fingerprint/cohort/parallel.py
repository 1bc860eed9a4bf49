"""Per-subject work of the cohort generator, in this process or on a pool, always yielded in subject order.

Subjects are independent and seeded by their plan, so the output is the same whatever ``workers`` is; order is kept
so CSV rows and slice arrays line up run after run. The pool uses ``spawn``: SimpleITK and torch do not survive a
fork of a threaded parent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fingerprint.cohort.visits import SubjectPlan

Result = TypeVar("Result")


def map_subjects(
    work: Callable[..., Result],
    subjects: list[SubjectPlan],
    extra_args: tuple[Any, ...],
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    chunksize: int = 1,
) -> Iterator[tuple[SubjectPlan, Result]]:
    """Yield ``(subject, work(subject, *extra_args))`` for each subject; ``work`` must be a module-level function."""
    if workers <= 1:
        results: Iterator[Result] = (work(subject, *extra_args) for subject in subjects)
        yield from _with_progress(subjects, results, progress)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        calls = [(work, subject, *extra_args) for subject in subjects]
        yield from _with_progress(subjects, pool.imap(_call, calls, chunksize=chunksize), progress)


def _with_progress(subjects, results, progress):
    for subject, result in zip(subjects, results):
        yield subject, result
        if progress:
            progress(1)


def _call(packed: tuple[Any, ...]) -> Any:
    work, *args = packed
    return work(*args)
