"""Work done ahead of need: a series folder fingerprinted (and its candidates verified) while its quiet time runs,
used at hand-on if the folder is unchanged.

Why: a series is complete only after a quiet time with no new instance (seconds; DICOM has no "end of series"), and
reading, aligning and embedding then take about as long again. A sender that released its association has usually
sent everything, so an idle worker can fingerprint the folder during the wait; when the series is handed on, the
result is taken if the folder still holds exactly the files it was computed from (names, sizes, modification times
and inodes: the spool writes each instance to a temporary file and renames it, so a re-sent instance is a new inode).
Otherwise it is computed again, as it would have been. What is computed ahead is what depends on the folder alone:
the fingerprint, and the verification scores of the candidates stored then (a pair's score depends on the two brains
only). The verdict is decided and recorded at hand-on, against the archive as it is then; candidates recorded
meanwhile are verified then (:class:`fingerprint.identity.archive.Archive`).

The cache is per process, shared by every archive object of one model version and slice method, holds at most
``capacity`` results (a few MB each), and an entry is used once. A result being computed is waited for by whoever
asks for the same folder meanwhile, so no series is fingerprinted twice at once.

Example::

    ahead = FingerprintsAhead()
    ahead.compute(folder, "dbp-r18-synth-v2|anatomical", lambda: fingerprint_series(folder))
    result = ahead.take(folder, "dbp-r18-synth-v2|anatomical")   # None if the folder changed meanwhile
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: What the folder held: (name, size, modification time in ns, inode) of each file, sorted.
FolderState = tuple[tuple[str, int, int, int], ...]

DEFAULT_CAPACITY = 4


def folder_state(folder: Path) -> FolderState:
    """The exact files of ``folder`` (not its sub-folders), as :data:`FolderState`."""
    entries = []
    with os.scandir(folder) as scan:
        for entry in scan:
            if entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                entries.append((entry.name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(sorted(entries))


@dataclass
class _Entry:
    state: FolderState
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None


class FingerprintsAhead:
    """Results of fingerprinting folders ahead of need, keyed by (folder, ``kind``: model version and slice method)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.taken = 0  # results used (for tests and metrics)

    def compute(self, folder: Path, kind: str, work: Callable[[], Any]) -> bool:
        """Do ``work`` (on ``folder``) now and keep its result if the folder did not change while it ran. True when
        kept. A rejected or failing series keeps nothing (the hand-on computes it again and records the reason)."""
        key = (str(Path(folder).resolve()), kind)
        try:
            before = folder_state(Path(folder))
        except OSError:
            return False
        entry = _Entry(before)
        with self._lock:
            known = self._entries.get(key)
            if known is not None and known.state == before:
                return known.result is not None or not known.done.is_set()
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        try:
            result = work()
            if folder_state(Path(folder)) == before:
                entry.result = result
        except Exception as error:  # noqa: BLE001 - ahead of need only: the hand-on computes it again
            log.debug("fingerprint ahead of hand-on not kept (%s)", type(error).__name__)
        finally:
            entry.done.set()
        return entry.result is not None

    def take(self, folder: Path, kind: str, wait_s: float = 600.0) -> Any:
        """The result computed ahead for ``folder`` if the folder still holds exactly what it was computed from
        (waiting for one being computed), else None. Each result is taken once."""
        key = (str(Path(folder).resolve()), kind)
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or not entry.done.wait(wait_s):
            return None
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]
        try:
            unchanged = folder_state(Path(folder)) == entry.state
        except OSError:
            return None
        if entry.result is None or not unchanged:
            return None
        self.taken += 1
        return entry.result

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


#: The process's cache: every archive object of this process shares it (an embedded worker computes ahead, the
#: worker that takes the series may be another thread with its own archive object).
shared = FingerprintsAhead()
