"""The durable spool on real files: atomic single-copy writes, state life cycle, recovery listing, real failures."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from reliability_log import record_fault

from dicom_node.completion import CompletionTracker
from dicom_node.group_sync import GroupSync, fsync_folder
from dicom_node.spool import Spool, SpoolWriteError, series_key_for, uid_key

SERIES_UID = "1.2.826.0.1.3680043.8.498.1"
SOP_UID = "1.2.826.0.1.3680043.8.498.1.1"


def _spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    return spool


def test_instance_written_once_per_sop_uid_without_temporaries_or_uids_in_paths(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    key = series_key_for(SERIES_UID)
    path, replaced = spool.store_instance(key, SOP_UID, b"first copy")
    assert not replaced and path.read_bytes() == b"first copy"
    path2, replaced = spool.store_instance(key, SOP_UID, b"second copy")
    assert replaced and path2 == path and path.read_bytes() == b"second copy"
    spool.store_instance(key, SOP_UID + ".2", b"other")
    assert spool.instance_count(key) == 2
    every_name = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")]
    assert not [n for n in every_name if n.endswith(".tmp")], every_name
    assert not [n for n in every_name if "1.2.826" in n], "UIDs must not appear in spool paths"
    assert path.parent == spool.instances_dir(key) and path.name == uid_key(SOP_UID, "sop") + ".dcm"


def test_mark_done_only_closes_the_generation_that_was_handed_on(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    key = series_key_for(SERIES_UID)
    spool.store_instance(key, SOP_UID, b"x")
    spool.update_state(key, lambda s: setattr(s, "state", "queued"))
    assert not spool.mark_done(key, generation=2), "a stale or future generation must not close the series"
    assert spool.read_state(key).state == "queued"
    assert spool.mark_done(key, generation=1)
    state = spool.read_state(key)
    assert state.state == "done" and state.done_at
    assert spool.pending() == []

    def reopen(s):  # what new instances do after a hand-on
        s.state, s.generation = "receiving", s.generation + 1

    spool.update_state(key, reopen)
    assert not spool.mark_done(key, generation=1), "finishing the old hand-on must not hide the new instances"
    assert [s.series_key for s in spool.pending()] == [key]


def test_unknown_state_is_refused(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    with pytest.raises(ValueError, match="unknown series state"):
        spool.update_state("abc", lambda s: setattr(s, "state", "bogus"))


def test_pending_rebuilds_a_series_whose_state_file_was_never_written(tmp_path: Path) -> None:
    """A crash between the first instance write and the first state write must not hide that instance."""
    spool = _spool(tmp_path)
    key = series_key_for(SERIES_UID)
    spool.store_instance(key, SOP_UID, b"x")
    (spool.series_dir(key) / "state.json").unlink(missing_ok=True)
    (pending,) = spool.pending()
    assert pending.series_key == key and pending.state == "receiving" and pending.received_count == 1
    assert pending.last_received


def test_corrupt_state_file_is_rebuilt_not_fatal(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    key = series_key_for(SERIES_UID)
    spool.store_instance(key, SOP_UID, b"x")
    (spool.series_dir(key) / "state.json").write_text("{not json")
    assert [s.series_key for s in spool.pending()] == [key]
    spool.update_state(key, lambda s: setattr(s, "state", "complete"))
    assert json.loads((spool.series_dir(key) / "state.json").read_text())["state"] == "complete"


def test_spool_replaced_by_a_file_raises_spool_write_error(tmp_path: Path) -> None:
    """A real ENOTDIR (running as root, chmod would not stop us): the series folder cannot be created."""
    spool = _spool(tmp_path)
    shutil.rmtree(spool.series_root)
    spool.series_root.write_text("not a folder")
    with pytest.raises(SpoolWriteError) as info:
        spool.store_instance(series_key_for(SERIES_UID), SOP_UID, b"x")
    assert info.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert "1.2.826" not in str(info.value)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A real 64 KiB file system (tmpfs), to fill up. Needs mount rights (root in the test container)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_raises_enospc_and_leaves_no_partial_file(tiny_tmpfs: Path) -> None:
    spool = Spool(tiny_tmpfs / "spool")
    spool.prepare()
    key = series_key_for(SERIES_UID)
    spool.store_instance(key, SOP_UID, b"small instance fits")
    with pytest.raises(SpoolWriteError) as info:
        spool.store_instance(key, SOP_UID + ".2", b"\0" * 200_000)
    assert info.value.errno == errno.ENOSPC
    assert "ENOSPC" in str(info.value)
    leftovers = sorted(p.name for p in spool.instances_dir(key).iterdir())
    assert leftovers == [uid_key(SOP_UID, "sop") + ".dcm"], "the failed write must leave nothing behind"
    spool.store_instance(key, SOP_UID + ".3", b"space is back after the cleanup")
    record_fault("spool disk full (spool)", sent=3, verdicts=len(list(spool.instances_dir(key).iterdir())), rejected=1,
                 unit="instances")


def test_purge_removes_only_series_finished_long_enough_ago(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    done_key, open_key = series_key_for(SERIES_UID), series_key_for(SERIES_UID + ".9")
    for key in (done_key, open_key):
        spool.store_instance(key, SOP_UID + key[:4], b"x")
        spool.update_state(key, lambda s: setattr(s, "state", "queued"))
    assert spool.mark_done(done_key)
    assert spool.purge_done(older_than_s=3600) == [], "finished just now: kept"
    assert spool.purge_done(older_than_s=0) == [done_key]
    assert not spool.series_dir(done_key).exists() and spool.series_dir(open_key).is_dir()
    assert not list((spool.root / "trash").iterdir())
    spool.store_instance(done_key, SOP_UID, b"re-sent later")  # the series can come back
    assert spool.instance_count(done_key) == 1


def test_a_writer_waiting_on_a_purged_series_locks_the_new_folder(tmp_path: Path) -> None:
    """Without the lock re-check, the waiter would write into a folder that was moved away (and fail)."""
    spool = _spool(tmp_path)
    key = series_key_for(SERIES_UID)
    spool.store_instance(key, SOP_UID, b"x")
    locked, errors = threading.Event(), []

    def purger() -> None:
        with spool._locked(key):
            locked.set()
            time.sleep(0.3)  # the writer opens the lock file and blocks on it meanwhile
            spool.series_dir(key).rename(tmp_path / "moved-away")

    def writer() -> None:
        locked.wait()
        try:
            spool.update_state(key, lambda s: setattr(s, "state", "receiving"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=purger), threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert spool.read_state(key).state == "receiving"


# --- group commit: concurrent writers share folder syncs, none is answered before its own write is durable ----------
class _RecordedSyncs:
    """The real syncs (os.fdatasync, fsync of the folder), recording what each covered; the first folder sync is
    held until every one of ``writers`` is either in its batch or queued behind it, so that the rest are certain to
    share the next one (nothing else here is simulated: real threads, real files, real syncs)."""

    def __init__(self, group: GroupSync, writers: int) -> None:
        self.group = group
        self.writers = writers
        self.lock = threading.Lock()
        self.events: list[tuple[str, object]] = []
        self.folder_syncs = 0

    def sync_data(self, fd: int) -> None:
        os.fdatasync(fd)
        with self.lock:
            self.events.append(("data", os.readlink(f"/proc/self/fd/{fd}")))

    def sync_folder(self, folder: Path) -> None:
        with self.lock:
            self.folder_syncs += 1
            first = self.folder_syncs == 1
        visible = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
        if first:  # the first batch's files are renamed (visible); wait for the others to queue theirs
            deadline = time.monotonic() + 10
            while len(self.group._queue) + len(visible) < self.writers and time.monotonic() < deadline:
                time.sleep(0.005)
        fsync_folder(folder)
        with self.lock:
            self.events.append(("folder", visible))


def test_concurrent_writes_share_folder_syncs_and_each_returns_only_once_durable(tmp_path: Path) -> None:
    writers = 6
    group = GroupSync()
    syncs = _RecordedSyncs(group, writers=writers)
    group.sync_data, group.sync_folder = syncs.sync_data, syncs.sync_folder
    spool = Spool(tmp_path / "spool", group_sync=group)
    spool.prepare()
    key = series_key_for(SERIES_UID)
    spool.instances_dir(key).mkdir(parents=True)
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(index: int) -> None:
        start.wait()
        try:
            path, _ = spool.store_instance(key, f"{SOP_UID}.{index}", f"instance {index}".encode() * 100)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            return
        with syncs.lock:
            syncs.events.append(("answered", path.name))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and all(not t.is_alive() for t in threads)
    # six writes, at most two folder syncs: the one held, and one shared by every writer that queued meanwhile
    assert syncs.folder_syncs == group.batches and 1 <= group.batches <= 2
    for position, (kind, what) in enumerate(syncs.events):
        if kind != "answered":
            continue
        earlier = syncs.events[:position]
        assert any(k == "data" and str(w).endswith(".tmp") and f".{what}." in str(w) for k, w in earlier), what
        assert any(k == "folder" and what in w for k, w in earlier), f"{what} answered before its folder sync"
    assert spool.instance_count(key) == writers
    for index in range(writers):
        path = spool.instances_dir(key) / f"{uid_key(f'{SOP_UID}.{index}', 'sop')}.dcm"
        assert path.read_bytes() == f"instance {index}".encode() * 100


def test_a_failed_folder_sync_fails_every_writer_of_that_batch(tmp_path: Path) -> None:
    """A folder whose sync fails (here: removed under the writer, a real ENOENT) answers an error, not success."""
    spool = _spool(tmp_path)
    key = series_key_for(SERIES_UID)
    calls: list[Path] = []

    def failing_sync(folder: Path) -> None:
        calls.append(folder)
        fsync_folder(folder.parent / "gone")

    spool.group_sync.sync_folder = failing_sync
    with pytest.raises(SpoolWriteError) as info:
        spool.store_instance(key, SOP_UID, b"x")
    assert info.value.errno == errno.ENOENT and calls == [spool.instances_dir(key)]


_CRASH_BETWEEN_WRITE_AND_SYNC = """
import sys, time
from pathlib import Path
from dicom_node.group_sync import GroupSync
from dicom_node.spool import Spool

def stop_here(fd):
    print("written", flush=True)
    time.sleep(60)  # SIGKILLed here: the bytes are in the temp file, not yet synced or renamed

spool = Spool(Path(sys.argv[1]), group_sync=GroupSync(sync_data=stop_here))
spool.store_instance(sys.argv[2], sys.argv[3], b"complete instance" * 1000)
"""


def test_a_crash_between_write_and_fsync_leaves_no_half_written_instance(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    key = series_key_for(SERIES_UID)
    spool.store_instance(key, SOP_UID, b"the old copy")
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_BETWEEN_WRITE_AND_SYNC, str(spool.root), key, SOP_UID],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "written"
    finally:
        child.kill()
        child.wait(timeout=10)
    leftovers = [p for p in spool.instances_dir(key).iterdir() if p.name.endswith(".tmp")]
    assert leftovers, "the child must have died with its temp file written (else this test proves nothing)"
    assert leftovers[0].stat().st_size == len(b"complete instance" * 1000)
    # the instance under its name is still the old, complete copy; the temp file is invisible to the worker
    assert [p.read_bytes() for p in spool.instance_paths(key)] == [b"the old copy"]
    assert spool.instance_count(key) == 1


def test_the_completion_loop_sleeps_exactly_until_the_next_series_falls_due(tmp_path: Path) -> None:
    """The hand-on comes when the quiet time is over, not at the loop's next fixed tick."""
    spool = _spool(tmp_path)
    key = series_key_for(SERIES_UID)
    tracker = CompletionTracker(spool, lambda completed: None, quiet_time_s=2.0, open_quiet_time_s=60.0)
    assert tracker.next_wait_s(0.25) == 0.25, "nothing pending: the longest sleep"
    tracker.instance_arriving(key, "assoc-1", "SCU")
    spool.store_instance(key, SOP_UID, b"x")
    tracker.instance_stored(key)
    assert tracker.next_wait_s(5.0) == 5.0, "association still open: due only after open_quiet_time_s"
    tracker.association_ended("assoc-1")
    stored_at = time.monotonic()
    wait = tracker.next_wait_s(5.0)
    elapsed = time.monotonic() - stored_at
    assert 2.0 - 0.2 - elapsed < wait <= 2.0 + 0.002, wait
    assert tracker.next_wait_s(0.25) == 0.25, "never longer than the longest sleep"
    assert tracker.check_once() == 0, "not due yet"


def test_a_series_erased_by_another_process_is_written_again_into_a_new_folder(tmp_path: Path) -> None:
    """The spool remembers which instance folders exist; one removed behind its back (``deepbrainprint erase``
    in another process) is made again on the next write, not reported as a failure."""
    spool = _spool(tmp_path)
    key = series_key_for(SERIES_UID)
    spool.store_instance(key, SOP_UID, b"before")
    assert Spool(spool.root).erase(key)  # another Spool object: this one's memory of the folder is now wrong
    assert not spool.instances_dir(key).exists()
    path, replaced = spool.store_instance(key, SOP_UID + ".2", b"after")
    assert not replaced and path.read_bytes() == b"after"
    assert [p.read_bytes() for p in spool.instance_paths(key)] == [b"after"]


def test_an_instance_arriving_while_its_series_is_handed_on_is_handed_on_again(tmp_path: Path) -> None:
    """The race behind a series left ``receiving`` forever: an instance announces itself (``instance_arriving``,
    which reopens the series on disk as a new generation) while the series' hand-on is in the callback, and is
    counted as stored only after the hand-on returned. The tracker must keep the series and hand the new
    generation on after its quiet time, instead of forgetting it until the next restart."""
    spool = _spool(tmp_path)
    key = series_key_for(SERIES_UID)
    handed_on: list[int] = []
    tracker: CompletionTracker

    def on_complete(completed) -> None:  # type: ignore[no-untyped-def]
        handed_on.append(completed.generation)
        if len(handed_on) == 1:  # a resent instance comes in on a new association during the first hand-on
            tracker.instance_arriving(key, "assoc-2", "SCU")

    tracker = CompletionTracker(spool, on_complete, quiet_time_s=0.0, open_quiet_time_s=60.0)
    tracker.instance_arriving(key, "assoc-1", "SCU")
    spool.store_instance(key, SOP_UID, b"x")
    tracker.instance_stored(key)
    tracker.association_ended("assoc-1")
    assert tracker.check_once() == 1 and handed_on == [1]
    spool.store_instance(key, SOP_UID + ".2", b"y")  # the write the arrival announced, finished after the hand-on
    tracker.instance_stored(key)
    tracker.association_ended("assoc-2")
    assert spool.read_state(key).generation == 2
    assert tracker.check_once() == 1 and handed_on == [1, 2], "the new generation was never handed on"
    assert spool.read_state(key).state == "queued"
    assert spool.mark_done(key, generation=2) and spool.pending() == []
