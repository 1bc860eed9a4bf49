"""Independent work items (cohort subjects, volumes to slice) in this process or on a pool, always yielded in order.

Items are independent (subjects are seeded by their plan; alignments are single-threaded and repeatable), so the
output is the same whatever ``workers`` is; order is kept so CSV rows and slice arrays line up run after run. The
pool uses ``spawn``: SimpleITK and torch do not survive a fork of a threaded parent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def ordered_map(
    work: Callable[..., Result],
    items: list[Item],
    extra_args: tuple[Any, ...] = (),
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    chunksize: int = 1,
) -> Iterator[tuple[Item, Result]]:
    """Yield ``(item, work(item, *extra_args))`` for each item, lazily; ``work`` must be a module-level function."""
    if workers <= 1:
        results: Iterator[Result] = (work(item, *extra_args) for item in items)
        yield from _with_progress(items, results, progress)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        calls = [(work, item, *extra_args) for item in items]
        yield from _with_progress(items, pool.imap(_call, calls, chunksize=chunksize), progress)


def _with_progress(items, results, progress):
    for item, result in zip(items, results):
        yield item, result
        if progress:
            progress(1)


def _call(packed: tuple[Any, ...]) -> Any:
    work, *args = packed
    return work(*args)
