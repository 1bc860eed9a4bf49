"""Replacing a file whole: write beside it, then rename over it.

Why: caches, weights, indexes and thresholds are read by other processes (workers, a second evaluation, the next
run) while one process writes them. A reader must see the old file or the complete new one, never a half-written
file, and a crash must not leave one under the final name. A rename within one folder is atomic, so every writer
here writes a temporary file in the target's own folder and renames it into place. The temporary name carries the
process and thread, so two writers of the same file never share one (the last rename wins, whole), and it keeps the
target's full suffix, because some writers choose the format from it (``np.savez`` appends ``.npz`` otherwise,
SimpleITK picks NIfTI from ``.nii.gz``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(path: Path) -> Path:
    """The temporary name this process and thread write ``path`` under: hidden, in the same folder, same suffix.

    Example: ``slices.npz`` -> ``.partial-4711-139.slices.npz``.
    """
    path = Path(path)
    return path.with_name(f".partial-{os.getpid()}-{threading.get_ident()}.{path.name}")


@contextmanager
def replacing(path: Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on leaving the block it is renamed onto ``path``.

    If the block raises, the temporary file is removed and ``path`` is left as it was. ``durable=True`` also syncs
    the new file before the rename and the folder after it, so the new content survives a power cut (the archive's
    index); caches that can be rebuilt skip the syncs. The folder is created if missing.

    Example::

        with replacing(cache / "slices.npz") as partial:
            np.savez(partial, slices=stack)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        yield partial
        if durable:
            _sync(partial, directory=False)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if durable:
        _sync(path.parent, directory=True)


def write_bytes(path: Path, data: bytes, *, durable: bool = False) -> None:
    """``path.write_bytes(data)``, replacing the file whole (see :func:`replacing`)."""
    with replacing(path, durable=durable) as partial:
        partial.write_bytes(data)


def write_text(path: Path, text: str, *, durable: bool = False) -> None:
    """``path.write_text(text)`` in UTF-8, replacing the file whole (see :func:`replacing`)."""
    write_bytes(path, text.encode("utf-8"), durable=durable)


def _sync(path: Path, *, directory: bool) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
