"""The durable spool: every received instance is on disk before the sender is told "success".

Layout (no PHI in any path: folder and file names are hashes of UIDs)::

    <root>/series/<series_key>/instances/<sop_key>.dcm   one file per SOP Instance UID (a re-send replaces it)
    <root>/series/<series_key>/state.json                the series' life cycle (see ``dicom_node.types``)
    <root>/series/<series_key>/.lock                     flock'd while state.json is read-modify-written
    <root>/rejected/<sop_key>.dcm + .json                instances that cannot be filed (kept, with the reason)
    <root>/trash/                                        finished series being deleted (``purge_done``)

Why write-then-rename with fsyncs: a power cut must leave either the old file or the complete new one, never a
truncated instance that the worker would later read as a broken series; fsync of the file makes the bytes durable,
fsync of the directory makes the rename durable. Writers arriving together (concurrent associations) share the
folder fsyncs (``dicom_node.group_sync``), and each is still answered only once its own instance is durable. The
state file is shared with worker processes (``mark_done``), hence the per-series ``flock``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .group_sync import GroupSync, fsync_folder
from .types import SERIES_STATES

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
INSTANCE_SUFFIX = ".dcm"
#: How many association ids a state file remembers (enough to trace a series, bounded for endless re-sends).
MAX_ASSOCIATION_IDS = 20


class SpoolWriteError(OSError):
    """The spool could not store something (disk full, not writable, not a directory...).

    The message names the errno and the spool-relative place only, never UIDs or patient data, so it can be logged
    and returned to the sender as a DICOM error comment.
    """


def uid_key(uid: str, kind: str) -> str:
    """A stable, PHI-free file-system name for a UID (UIDs may embed dates or device serials)."""
    return hashlib.sha256(f"{kind}:{uid.strip()}".encode()).hexdigest()[:32]


def series_key_for(series_instance_uid: str) -> str:
    """The series key used for folders, state files, logs and ``CompletedSeries.series_key``."""
    return uid_key(series_instance_uid, "series")


def series_files(folder: Path) -> list[Path]:
    """The files of a series folder in a stable order, without the hidden temporary files of writes in progress."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class SeriesState:
    """The content of one ``state.json``."""

    series_key: str
    state: str = "receiving"
    generation: int = 1
    received_count: int = 0  # instances stored, re-sent duplicates included (instance_count(): unique files)
    first_received: str = ""  # ISO 8601 UTC
    last_received: str = ""
    calling_ae_title: str = ""  # of the last association that sent to this series
    association_ids: list[str] = field(default_factory=list)
    handed_on_at: str = ""
    done_at: str = ""
    last_error: str = ""  # why the last hand-on failed (exception type and message; no PHI by construction)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeriesState:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _describe(exc: OSError, where: str) -> str:
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    return f"spool cannot store ({name}: {os.strerror(exc.errno or errno.EIO)}) in {where}"


class Spool:
    """A spool directory. Cheap to construct: the worker makes one per task to call :meth:`mark_done`."""

    def __init__(self, root: Path, *, fsync: bool = True, group_sync: GroupSync | None = None) -> None:
        self.root = Path(root)
        self.fsync = fsync  # False only for benchmarks that want to see what durability costs
        self.group_sync = group_sync or GroupSync(fsync=fsync)
        self._known_folders: set[Path] = set()  # instance folders seen to exist (saves a stat per instance)

    # --- layout -------------------------------------------------------------------------------------------------
    @property
    def series_root(self) -> Path:
        return self.root / "series"

    @property
    def rejected_dir(self) -> Path:
        return self.root / "rejected"

    def series_dir(self, series_key: str) -> Path:
        return self.series_root / series_key

    def instances_dir(self, series_key: str) -> Path:
        """The folder handed on as ``CompletedSeries.path``: this series' ``*.dcm`` files and nothing else visible."""
        return self.series_dir(series_key) / "instances"

    def prepare(self) -> None:
        """Create the layout; raises :class:`SpoolWriteError` when the spool is unusable (checked at start-up)."""
        self._makedirs(self.series_root)
        self._makedirs(self.rejected_dir)
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise SpoolWriteError(exc.errno, _describe(exc, "spool root")) from exc

    def _makedirs(self, path: Path) -> None:
        """mkdir -p that also fsyncs each parent it changed, so a new series folder survives a crash."""
        missing: list[Path] = []
        probe = path
        while not probe.is_dir():
            missing.append(probe)
            if probe.parent == probe:
                break
            probe = probe.parent
        try:
            for folder in reversed(missing):
                try:
                    folder.mkdir()
                except FileExistsError:
                    if not folder.is_dir():
                        raise
                if self.fsync:
                    fsync_folder(folder.parent)
        except OSError as exc:
            raise SpoolWriteError(exc.errno, _describe(exc, "spool folder")) from exc

    # --- durable writes -----------------------------------------------------------------------------------------
    def _write_atomic(self, target: Path, data: bytes | tuple[bytes, ...]) -> None:
        """Temp file in the same folder, fsync, rename over ``target``, fsync the folder (shared with concurrent
        writers). Leaves no temp behind."""
        try:
            self.group_sync.write(target, data)
        except OSError as exc:
            raise SpoolWriteError(exc.errno, _describe(exc, target.parent.name)) from exc

    def store_instance(
        self, series_key: str, sop_instance_uid: str, encoded: bytes | tuple[bytes, ...]
    ) -> tuple[Path, bool]:
        """Write one instance (DICOM file bytes, or the file's parts in order) durably. Returns (path, replaced):
        ``replaced`` is True when this SOP Instance UID was already spooled, in which case the one file now holds
        the latest copy."""
        folder = self.instances_dir(series_key)
        if folder not in self._known_folders:
            if not folder.is_dir():
                self._makedirs(folder)
            self._known_folders.add(folder)
        target = folder / f"{uid_key(sop_instance_uid, 'sop')}{INSTANCE_SUFFIX}"
        replaced = target.exists()
        try:
            self._write_atomic(target, encoded)
        except SpoolWriteError as exc:
            if exc.errno != errno.ENOENT or folder.is_dir():
                raise
            self._known_folders.discard(folder)  # purged or erased meanwhile: make it again, once
            self._makedirs(folder)
            self._known_folders.add(folder)
            self._write_atomic(target, encoded)
        return target, replaced

    def store_rejected(self, sop_instance_uid: str, encoded: bytes, reason: str) -> Path:
        """Keep an instance that cannot be filed under a series, with its reason, so nothing is lost."""
        key = uid_key(sop_instance_uid or uuid.uuid4().hex, "sop")
        self._makedirs(self.rejected_dir)
        target = self.rejected_dir / f"{key}{INSTANCE_SUFFIX}"
        self._write_atomic(target, encoded)
        note = {"reason": reason, "received": utc_now().isoformat()}
        self._write_atomic(target.with_suffix(".json"), json.dumps(note).encode())
        return target

    # --- state files --------------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self, series_key: str) -> Iterator[None]:
        """flock the series' ``.lock``. If :meth:`purge_done` moved the folder away while we waited, the lock we got
        belongs to the old folder: lock the (new) one at the path instead."""
        folder = self.series_dir(series_key)
        lock_path = folder / ".lock"
        while True:
            if not folder.is_dir():
                self._makedirs(folder)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise SpoolWriteError(exc.errno, _describe(exc, "state lock")) from exc
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                at_path = os.stat(lock_path)
            except FileNotFoundError:
                at_path = None
            if at_path is not None and (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino):
                break
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def read_state(self, series_key: str) -> SeriesState | None:
        """The stored state, or None when the series has none (unknown, or spooled before its first state write)."""
        path = self.series_dir(series_key) / STATE_FILE
        try:
            return SeriesState.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("series %s: unreadable state file (%s); rebuilding it", series_key, type(exc).__name__)
            return None

    def update_state(self, series_key: str, change: Callable[[SeriesState], Any]) -> SeriesState:
        """Read-modify-write ``state.json`` under the series lock (safe across processes). ``change`` edits the
        state in place; returning ``False`` from it skips the write (nothing to change)."""
        with self._locked(series_key):
            state = self.read_state(series_key) or self._rebuilt_state(series_key)
            if change(state) is not False:
                if state.state not in SERIES_STATES:
                    raise ValueError(f"unknown series state {state.state!r}")
                self._write_atomic(self.series_dir(series_key) / STATE_FILE, json.dumps(state.__dict__).encode())
            return state

    def _rebuilt_state(self, series_key: str) -> SeriesState:
        """A state for a series with files but no state file (crash between first write and first state write)."""
        count = self.instance_count(series_key)
        times = [p.stat().st_mtime for p in self.instance_paths(series_key)]
        state = SeriesState(series_key=series_key, received_count=count)
        if times:
            state.first_received = datetime.fromtimestamp(min(times), timezone.utc).isoformat()
            state.last_received = datetime.fromtimestamp(max(times), timezone.utc).isoformat()
        return state

    def instance_paths(self, series_key: str) -> list[Path]:
        folder = self.instances_dir(series_key)
        if not folder.is_dir():
            return []
        return [p for p in series_files(folder) if p.suffix == INSTANCE_SUFFIX]

    def instance_count(self, series_key: str) -> int:
        return len(self.instance_paths(series_key))

    def series_keys(self) -> list[str]:
        if not self.series_root.is_dir():
            return []
        return sorted(p.name for p in self.series_root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def pending(self) -> list[SeriesState]:
        """Series received but not processed (receiving, complete or queued): what a restart must hand on again."""
        result = []
        for key in self.series_keys():
            if not self.instance_paths(key):
                continue
            state = self.read_state(key) or self._rebuilt_state(key)
            if state.state != "done":
                result.append(state)
        return result

    def mark_done(self, series_key: str, generation: int | None = None) -> bool:
        """Called by the worker when it has finished a handed-on series. Returns False (and changes nothing) when
        newer instances reopened the series since that hand-on: the newer hand-on will be finished later."""

        def change(state: SeriesState) -> bool:
            if generation is not None and generation != state.generation:
                return False
            if state.state not in ("complete", "queued"):
                return False
            state.state = "done"
            state.done_at = utc_now().isoformat()
            return True

        return self.update_state(series_key, change).state == "done"

    def _move_to_trash(self, series_key: str) -> Path:
        """Move one series' folder into ``<root>/trash`` (atomic; the caller holds the series lock), where it is
        deleted outside the lock; returns where it went."""
        trash = self.root / "trash"
        self._makedirs(trash)
        moved = trash / f"{series_key}-{uuid.uuid4().hex[:8]}"
        os.replace(self.series_dir(series_key), moved)
        self._known_folders.discard(self.instances_dir(series_key))
        return moved

    def erase(self, series_key: str) -> bool:
        """Delete one series from the spool now, whatever its state (right to erasure); False if it was not here."""
        if not self.series_dir(series_key).exists():
            return False
        with self._locked(series_key):
            moved = self._move_to_trash(series_key)
        shutil.rmtree(moved, ignore_errors=True)
        return True

    def purge_done(self, older_than_s: float) -> list[str]:
        """Delete series the worker finished more than ``older_than_s`` ago (the verdict is in the store; the spool
        is a buffer, not an archive). A series re-sent meanwhile is ``receiving`` again and is kept. The folder is
        first moved to ``<root>/trash`` under the series lock (atomic), then deleted."""
        cutoff = utc_now() - timedelta(seconds=older_than_s)

        def expired(state: SeriesState | None) -> bool:
            if state is None or state.state != "done" or not state.done_at:
                return False
            return datetime.fromisoformat(state.done_at) < cutoff

        trash = self.root / "trash"
        purged = []
        for key in self.series_keys():
            if not expired(self.read_state(key)):
                continue
            with self._locked(key):
                if not expired(self.read_state(key)):
                    continue
                self._move_to_trash(key)
                purged.append(key)
        if trash.is_dir():
            for leftover in trash.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
        if purged:
            log.info("purged %d finished series from the spool", len(purged))
        return purged
