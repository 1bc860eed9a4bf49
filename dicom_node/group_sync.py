"""Group commit for the spool: writers that arrive together share the fsync of their folders.

Why: a sender is answered only once its instance is durable: the file's data synced before the rename (so a crash
never leaves a half-written file under its final name) and its folder synced after the rename (so the name
survives). Each writer syncs its own file's data (the kernel already joins concurrent data syncs into shared
journal commits), then queues its rename. One of the queued writers, the leader, renames every queued file and
syncs each folder they are in once, while the others wait for it; writers that arrive meanwhile form the next batch,
led by one of them. A lone writer pays what it paid before (no timer, no added latency); concurrent associations
share folder syncs. Nobody returns before the folder sync that covers its own rename has finished.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def fsync_folder(path: Path) -> None:
    """fsync a directory, making the renames and creations in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Rename:
    tmp: Path
    target: Path
    done: bool = False
    error: OSError | None = None


class GroupSync:
    """Durable write-then-rename with folder syncs shared by concurrent writers (one instance per spool).

    ``sync_data`` (default ``os.fdatasync``) and ``sync_folder`` (default :func:`fsync_folder`) are parameters so
    that a test can record, or hold, the real syncs; ``fsync=False`` skips both and ``grouped=False`` has each
    writer sync its own folder (benchmarks of what durability and grouping cost). ``batches`` counts folder-sync
    rounds, for tests and benchmarks.
    """

    def __init__(
        self,
        *,
        fsync: bool = True,
        grouped: bool = True,
        sync_data: Callable[[int], None] = os.fdatasync,
        sync_folder: Callable[[Path], None] = fsync_folder,
    ) -> None:
        self.fsync = fsync
        self.grouped = grouped
        self.sync_data = sync_data
        self.sync_folder = sync_folder
        self.batches = 0
        self._cond = threading.Condition()
        self._queue: list[_Rename] = []
        self._leading = False

    def write(self, target: Path, data: bytes | tuple[bytes, ...]) -> None:
        """Write ``data`` (bytes, or parts written one after the other: no joined copy) to ``target`` durably (temp
        file in the same folder, data sync, rename, folder sync). Returns only when all of it is on disk; raises
        OSError otherwise and leaves no temp file behind."""
        # one write at a time per thread, so process and thread ids name the temp file uniquely (no random syscall)
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                for part in (data,) if isinstance(data, bytes) else data:
                    fh.write(part)
                fh.flush()
                if self.fsync:
                    self.sync_data(fh.fileno())  # data + size; mtime is not worth a metadata flush
        except OSError:
            _unlink_quietly(tmp)
            raise
        item = _Rename(tmp, target)
        if self.grouped:
            self._publish(item)
        else:
            self._commit([item])
        if item.error is not None:
            raise item.error

    def _publish(self, item: _Rename) -> None:
        """Queue the rename; lead a batch when no other writer is leading one, else wait until ours is done."""
        with self._cond:
            self._queue.append(item)
            while self._leading and not item.done:
                self._cond.wait()
            if item.done:
                return
            self._leading = True
            batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        except BaseException as exc:  # never answer success for a batch whose sync did not finish
            for queued in batch:
                if queued.error is None:
                    queued.error = OSError(errno.EIO, f"spool sync failed ({type(exc).__name__})")
        finally:
            with self._cond:
                for queued in batch:
                    queued.done = True
                self._leading = False
                self._cond.notify_all()

    def _commit(self, batch: list[_Rename]) -> None:
        """Rename each queued file, then sync each folder once; a failure is recorded on the writers it concerns."""
        folders: dict[Path, list[_Rename]] = {}
        for item in batch:
            try:
                os.replace(item.tmp, item.target)
            except OSError as exc:
                item.error = exc
                _unlink_quietly(item.tmp)
                continue
            folders.setdefault(item.target.parent, []).append(item)
        if not self.fsync:
            return
        self.batches += 1
        for folder, items in folders.items():
            try:
                self.sync_folder(folder)
            except OSError as exc:
                for item in items:
                    item.error = exc


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
