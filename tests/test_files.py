"""Replacing a file whole (fingerprint.files): readers see the old file or the whole new one, never a mix."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from fingerprint import files
from fingerprint.files import partial_path, replacing, write_text


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".partial-"))


def test_the_new_content_replaces_the_old_whole_and_no_partial_file_stays(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "slices.npz"  # the folder is made on the way
    with replacing(target) as partial:
        assert partial.parent == target.parent and partial.name.endswith(".slices.npz")
        np.savez(partial, slices=np.arange(5))
    with np.load(target) as data:
        assert data["slices"].tolist() == [0, 1, 2, 3, 4]
    assert leftovers(target.parent) == []  # np.savez wrote the partial name itself: it kept the .npz suffix


def test_a_failed_write_leaves_the_old_file_and_removes_its_partial(tmp_path: Path) -> None:
    target = tmp_path / "thresholds.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError, match="disk gone"):
        with replacing(target) as partial:
            partial.write_text("half of the ne")
            raise RuntimeError("disk gone")
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_two_threads_writing_one_file_at_once_leave_one_of_their_contents_whole(tmp_path: Path) -> None:
    """Each writer writes its first half, waits for the other, then its second half: writers sharing one temporary
    file would leave a mix of the two."""
    target = tmp_path / "head.nii.gz"
    halves_written = threading.Barrier(2)
    names: list[Path] = []

    def writer(mark: bytes) -> None:
        with replacing(target) as partial:
            names.append(partial)
            with open(partial, "wb") as fh:
                fh.write(mark * 1000)
                fh.flush()
                halves_written.wait(timeout=10)
                fh.write(mark * 1000)

    threads = [threading.Thread(target=writer, args=(mark,)) for mark in (b"a", b"b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == 2
    assert target.read_bytes() in (b"a" * 2000, b"b" * 2000)
    assert leftovers(tmp_path) == []


def test_durable_replacement_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path: Path, monkeypatch) -> None:
    """The real syncs run; the spy only records what existed under which name when each ran."""
    target = tmp_path / "index.faiss"
    synced: list[tuple[str, bool]] = []
    real_sync = files._sync

    def recording_sync(path: Path, *, directory: bool) -> None:
        synced.append((Path(path).name, target.exists()))
        real_sync(path, directory=directory)

    monkeypatch.setattr(files, "_sync", recording_sync)
    with replacing(target, durable=True) as partial:
        partial.write_bytes(b"index")
    assert synced == [(partial_path(target).name, False), (tmp_path.name, True)]
    assert target.read_bytes() == b"index"
