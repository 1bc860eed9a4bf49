"""The storage SCP over real DICOM associations (pynetdicom SCU in the test), real files, real spool on disk."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from reliability_log import record_fault

from deepbrainprint.settings import Settings, load_settings
from dicom_node.scp import StorageNode, accepted_transfer_syntaxes
from dicom_node.scu import AssociationFailed, echo, send_instances
from dicom_node.spool import Spool, series_key_for
from dicom_node.types import CompletedSeries
from fingerprint.imaging.dicom_write import noise_series

QUIET_S = 0.3
PATIENT_ID = "SYNTH-PATIENT-0001"


class Collector:
    """The ``on_series_complete`` callback of the tests: records hand-ons; can be told to fail first."""

    def __init__(self, failures: int = 0) -> None:
        self.completed: list[CompletedSeries] = []
        self.failures = failures
        self.calls = 0
        self._cond = threading.Condition()

    def __call__(self, completed: CompletedSeries) -> None:
        with self._cond:
            self.calls += 1
            if self.failures > 0:
                self.failures -= 1
                raise ConnectionError("worker queue unreachable")
            self.completed.append(completed)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[CompletedSeries]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.completed) >= count, timeout)
            return list(self.completed)

    def none_beyond(self, count: int, window_s: float) -> bool:
        """True when no more than ``count`` hand-ons came within ``window_s``: waits on the hand-ons themselves (so a
        wrong one shows at once) and fails the negative check only if one really arrived in the stated window."""
        with self._cond:
            return not self._cond.wait_for(lambda: len(self.completed) > count, window_s)


NodeFactory = Callable[..., tuple[StorageNode, Collector]]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start StorageNodes on free ports with a short quiet time; every node is stopped at the end."""
    nodes: list[StorageNode] = []

    def factory(collector: Collector | None = None, spool_dir: Path | None = None, **overrides) -> tuple:
        settings = load_settings(
            home=tmp_path / "home", spool_dir=spool_dir or tmp_path / "spool", port=0, quiet_time_s=QUIET_S,
            **overrides,
        )  # fmt: skip
        collector = collector or Collector()
        node = StorageNode(settings.node_config(), collector).start()
        nodes.append(node)
        return node, collector

    yield factory
    for node in nodes:
        node.stop()


def _wait_for_state(spool: Spool, key: str, wanted: str, timeout: float = 5.0) -> str:
    """The state file is written right after the callback returns: poll briefly for it."""
    deadline = time.monotonic() + timeout
    while (state := spool.read_state(key)) is None or state.state != wanted:
        if time.monotonic() > deadline:
            return state.state if state else "missing"
        time.sleep(0.02)
    return state.state


def _stored_files(node: StorageNode, key: str) -> list[Path]:
    return node.spool.instance_paths(key)


def _dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a DICOM file, without preamble and file meta (what travels on the wire)."""
    with open(path, "rb") as fh:
        pydicom.filereader.read_preamble(fh, False)
        pydicom.filereader._read_file_meta_info(fh)
        return fh.read()


def test_echo_is_answered(start_node: NodeFactory) -> None:
    node, _ = start_node()
    assert echo(node.port) == 0


def test_real_multi_file_series_is_spooled_and_handed_on_once(start_node: NodeFactory, shared_data: Path) -> None:
    files = sorted((shared_data / "repeats" / "decubitus-HFS-t1-2d").glob("*.dcm"))
    assert len(files) == 35
    node, collector = start_node()
    assert send_instances(files, node.port).all_ok
    (completed,) = collector.wait(1)
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    assert completed.series_key == series_key_for(series_uid)
    assert completed.instance_count == 35 and completed.calling_ae_title == "DBP-SCU"
    stored = sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in completed.path.glob("*.dcm"))
    assert stored == sorted(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files)
    assert collector.none_beyond(1, QUIET_S * 4), "a series must be handed on once, not on every check"
    assert _wait_for_state(node.spool, completed.series_key, "queued") == "queued"
    state = node.spool.read_state(completed.series_key)
    assert state.received_count == 35 and state.handed_on_at


def test_dcmtk_storescu_sender_is_accepted(start_node: NodeFactory, shared_data: Path) -> None:
    """A sender that is not pynetdicom: DCMTK's storescu (the toolkit Orthanc and many PACS are built on)."""
    storescu = shutil.which("storescu")
    if storescu is None:
        pytest.skip("DCMTK storescu is not installed (apt-get install dcmtk)")
    folder = shared_data / "repeats" / "decubitus-HFP-t1-2d"
    node, collector = start_node()
    done = subprocess.run([storescu, "-aet", "PACS", "-aec", "DEEPBRAINPRINT", "+sd", "127.0.0.1", str(node.port),
                           str(folder)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (completed,) = collector.wait(1)
    assert completed.instance_count == len(list(folder.glob("*.dcm"))) and completed.calling_ae_title == "PACS"


def test_enhanced_multiframe_file_is_stored_bit_identical(start_node: NodeFactory, shared_data: Path) -> None:
    (source,) = sorted((shared_data / "t1" / "siemens-prisma-xa30-enhanced-2mm").glob("*"))
    node, collector = start_node()
    assert send_instances([source], node.port).all_ok
    (completed,) = collector.wait(1)
    (stored,) = completed.path.glob("*.dcm")
    assert _dataset_bytes(stored) == _dataset_bytes(source)
    assert int(pydicom.dcmread(stored, stop_before_pixels=True).NumberOfFrames) == 96


def test_compressed_transfer_syntaxes_are_accepted_and_stored_bit_identical(
    start_node: NodeFactory, shared_data: Path, tmp_path: Path
) -> None:
    sources = sorted((shared_data / "hard" / "transfer-syntaxes").glob("*.dcm"))
    deflated = tmp_path / "deflated.dcm"  # deflate is the one common syntax not in the shared files
    reference = pydicom.dcmread(sources[0])
    reference.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    reference.SOPInstanceUID = reference.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    reference.save_as(deflated, enforce_file_format=True)
    sources.append(deflated)
    syntaxes = {pydicom.filereader.read_file_meta_info(p).TransferSyntaxUID for p in sources}
    assert syntaxes <= set(accepted_transfer_syntaxes())
    assert len(syntaxes) == 8

    node, collector = start_node()
    assert send_instances(sources, node.port).all_ok
    (completed,) = collector.wait(1)  # one series, ten instances
    by_sop = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in completed.path.glob("*.dcm")}
    assert len(by_sop) == len(sources)
    expected_pixels = pydicom.dcmread(sources[0]).pixel_array
    for source in sources:
        original = pydicom.dcmread(source)
        stored_path = by_sop[original.SOPInstanceUID]
        stored = pydicom.dcmread(stored_path)
        assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert _dataset_bytes(stored_path) == _dataset_bytes(source), f"{source.name} changed on the way"
        # The whole file is what pynetdicom's own encoded_dataset() writes (dicom_node.part10 packs the meta itself).
        meta = encode_file_meta(create_file_meta(sop_class_uid=original.SOPClassUID,
                                                 sop_instance_uid=original.SOPInstanceUID,
                                                 transfer_syntax=original.file_meta.TransferSyntaxUID))
        assert stored_path.read_bytes() == b"\x00" * 128 + b"DICM" + meta + _dataset_bytes(source)
        assert (stored.pixel_array == expected_pixels).all(), f"{source.name} does not decode to the same image"


def test_duplicate_sop_instances_are_stored_once(start_node: NodeFactory) -> None:
    series = noise_series(3, size=8)
    node, collector = start_node()
    assert send_instances(series + series, node.port).all_ok  # the same three twice in one association
    assert send_instances(series[:1], node.port).all_ok  # and one again in another
    key = series_key_for(series[0].SeriesInstanceUID)
    completed = collector.wait(1)
    assert len(_stored_files(node, key)) == 3
    assert completed[0].instance_count == 3
    assert collector.none_beyond(1, QUIET_S * 3), "the late duplicate must not hand the series on again"
    assert node.spool.read_state(key).received_count == 7


def test_series_waits_for_release_then_quiet_time_and_reopens_for_late_instances(start_node: NodeFactory) -> None:
    series = noise_series(5, size=8)
    key = series_key_for(series[0].SeriesInstanceUID)
    node, collector = start_node()
    assoc = _open_association(node.port)
    for ds in series[:3]:
        assert assoc.send_c_store(ds).Status == 0
    assert collector.none_beyond(0, QUIET_S * 4), "an open association means more instances may come"
    assert node.spool.read_state(key).state == "receiving"
    assoc.release()
    (first,) = collector.wait(1)
    assert first.instance_count == 3 and first.generation == 1
    assert node.spool.mark_done(key, first.generation)

    assert send_instances(series[3:], node.port).all_ok  # the rest arrives later: processed again, not lost
    _, second = collector.wait(2)
    assert second.series_key == key and second.instance_count == 5 and second.generation == 2
    assert not node.spool.mark_done(key, first.generation), "the old hand-on must not close the new one"
    assert node.spool.mark_done(key, second.generation)
    assert collector.none_beyond(2, QUIET_S * 3)


def _open_association(port: int):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="DBP-SCU")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="DEEPBRAINPRINT")
    assert assoc.is_established
    return assoc


def test_series_sent_over_two_concurrent_associations_waits_for_both(start_node: NodeFactory) -> None:
    series = noise_series(2, size=8)
    node, collector = start_node()
    first, second = _open_association(node.port), _open_association(node.port)
    assert first.send_c_store(series[0]).Status == 0
    assert second.send_c_store(series[1]).Status == 0
    first.release()
    assert collector.none_beyond(0, QUIET_S * 4), "the other association may still send instances of this series"
    second.release()
    (completed,) = collector.wait(1)
    assert completed.instance_count == 2
    assert len(node.spool.read_state(completed.series_key).association_ids) == 2


def test_series_on_an_association_kept_open_is_handed_on_after_the_open_quiet_time(start_node: NodeFactory) -> None:
    """A sender that keeps its association open (series after series) must not hold finished series back."""
    first, second = noise_series(2, size=8), noise_series(1, size=8, seed=2)
    node, collector = start_node(open_quiet_time_s=1.0)
    assoc = _open_association(node.port)
    for ds in first:
        assert assoc.send_c_store(ds).Status == 0
    assert collector.none_beyond(0, QUIET_S * 2), "released-or-open-long-enough: not yet"
    (handed,) = collector.wait(1, timeout=5)
    assert handed.instance_count == 2 and handed.generation == 1
    assert assoc.send_c_store(second[0]).Status == 0  # the same association goes on with another series
    assoc.release()
    _, other = collector.wait(2)
    assert other.series_key == series_key_for(second[0].SeriesInstanceUID)
    assert node.spool.read_state(handed.series_key).received_count == 2


def test_aborted_association_keeps_what_was_stored(start_node: NodeFactory) -> None:
    series = noise_series(5, size=8)
    node, collector = start_node()
    result = send_instances(series, node.port, abort_after=3)
    assert result.statuses == [0, 0, 0]
    (completed,) = collector.wait(1)
    assert completed.instance_count == 3


def test_two_series_in_one_association_are_handed_on_separately(start_node: NodeFactory) -> None:
    first, second = noise_series(2, size=8), noise_series(3, size=8, seed=1)
    node, collector = start_node()
    assert send_instances(first + second, node.port).all_ok
    completed = collector.wait(2)
    assert sorted(c.instance_count for c in completed) == [2, 3]


def test_unwritable_spool_answers_out_of_resources_and_recovers(start_node: NodeFactory) -> None:
    """Real failure: the spool's series folder is replaced by a file, so every write fails with ENOTDIR/EEXIST."""
    node, collector = start_node()
    series = noise_series(2, size=8)
    shutil.rmtree(node.spool.series_root)
    node.spool.series_root.write_text("the disk went away")
    assert send_instances(series, node.port).statuses == [0xA700, 0xA700]
    assert collector.none_beyond(0, QUIET_S * 3), "nothing was stored, so nothing may be handed on"
    node.spool.series_root.unlink()  # the administrator fixes the disk; the sender retries
    assert send_instances(series, node.port).all_ok
    (completed,) = collector.wait(1)
    assert completed.instance_count == 2


def test_full_disk_answers_out_of_resources(start_node: NodeFactory, tmp_path: Path) -> None:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount_point)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    node = None
    try:
        node, collector = start_node(spool_dir=mount_point / "spool")
        series = noise_series(10, size=64)  # ~8 KiB of pixels each: about 80 KiB + state files; 128 KiB fills up
        sent = series + noise_series(20, size=64, seed=3)
        statuses = send_instances(sent, node.port).statuses
        assert statuses[0] == 0 and 0xA700 in statuses, statuses
        assert set(statuses) <= {0, 0xA700}
        stored = sum(node.spool.instance_count(k) for k in node.spool.series_keys())
        record_fault("spool disk full (SCP)", sent=len(statuses), verdicts=stored, rejected=statuses.count(0xA700),
                     unit="instances")
        assert stored == statuses.count(0), "every success must be a file on disk, every failure not"
        assert not list(mount_point.rglob("*.tmp"))
        with_files = [k for k in node.spool.series_keys() if node.spool.instance_count(k)]
        completed = collector.wait(len(with_files))
        assert collector.none_beyond(len(with_files), QUIET_S * 2), "no empty hand-on"
        assert sorted(c.series_key for c in collector.completed) == sorted(with_files), "no empty hand-on"
        assert sum(c.instance_count for c in completed) == stored

        # Space returns (the volume grows): the same node, never restarted, stores what it refused when resent.
        grown = subprocess.run(["mount", "-o", "remount,size=4m", str(mount_point)], capture_output=True)
        assert grown.returncode == 0, grown.stderr.decode()
        refused = [ds for ds, status in zip(sent, statuses) if status == 0xA700]
        assert send_instances(refused, node.port).statuses == [0] * len(refused)
        assert sum(node.spool.instance_count(k) for k in node.spool.series_keys()) == len(sent)
        assert not list(mount_point.rglob("*.tmp"))
    finally:
        if node is not None:
            node.stop()
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_restart_hands_on_again_what_was_not_finished(start_node: NodeFactory, tmp_path: Path) -> None:
    """Received-but-not-complete and queued-but-not-done series are handed on again; done ones are not."""
    spool_dir = tmp_path / "spool"
    receiving, queued, finished = (noise_series(2, size=8, seed=seed) for seed in range(3))
    node, collector = start_node(spool_dir=spool_dir)
    assert send_instances(finished, node.port).all_ok
    assert send_instances(queued, node.port).all_ok
    done, not_done = sorted(collector.wait(2), key=lambda c: c.series_key != series_key_for(finished[0].SeriesInstanceUID))
    assert node.spool.mark_done(done.series_key, done.generation)
    assert _wait_for_state(node.spool, not_done.series_key, "queued") == "queued"  # the worker never finished it
    node.tracker.quiet_time_s = 3600  # the next series will not complete before the "crash"
    assert send_instances(receiving, node.port).all_ok
    node.stop()

    restarted, collector2 = start_node(spool_dir=spool_dir)
    expected = {series_key_for(receiving[0].SeriesInstanceUID), series_key_for(queued[0].SeriesInstanceUID)}
    assert set(restarted.recovered) == expected
    again = collector2.wait(2, timeout=5)
    assert {c.series_key for c in again} == expected and all(c.instance_count == 2 for c in again)
    assert collector2.none_beyond(2, QUIET_S * 2), "a recovered series is handed on once"


def test_failed_hand_on_is_retried_and_series_marked_queued_only_after_success(start_node: NodeFactory) -> None:
    node, collector = start_node(collector=Collector(failures=1))
    series = noise_series(2, size=8)
    key = series_key_for(series[0].SeriesInstanceUID)
    assert send_instances(series, node.port).all_ok
    deadline = time.monotonic() + 5  # the failed hand-on is written to the series' state: wait for it, not a while
    while ((state := node.spool.read_state(key)) is None or "ConnectionError" not in state.last_error) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state.state == "complete" and "ConnectionError" in state.last_error
    (completed,) = collector.wait(1, timeout=10)
    assert completed.instance_count == 2
    assert _wait_for_state(node.spool, key, "queued") == "queued"
    assert node.spool.read_state(key).last_error == ""


def test_scu_associates_again_when_a_response_does_not_come(tmp_path: Path) -> None:
    """A real SCP that answers the first C-STORE too late: our SCU gives up on that association, associates again
    and re-sends, so the demo/tests never stall or lose an instance on a lost response."""
    received: list[str] = []

    def slow_first(event):  # type: ignore[no-untyped-def]
        received.append(event.request.AffectedSOPInstanceUID)
        if len(received) == 1:
            time.sleep(1.5)
        return 0x0000

    ae = AE(ae_title="DEEPBRAINPRINT")
    ae.add_supported_context(MRImageStorage)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, slow_first)])
    try:
        series = noise_series(3, size=8)
        result = send_instances(series, server.server_address[1], response_timeout_s=0.5)
        assert result.statuses == [0, 0, 0]
        assert received[0] == received[1] == series[0].SOPInstanceUID, "the unanswered instance is sent again"
        assert received[2:] == [ds.SOPInstanceUID for ds in series[1:]]
    finally:
        server.shutdown()


def test_calling_ae_allow_list_and_called_ae_are_enforced(start_node: NodeFactory) -> None:
    node, _ = start_node(allowed_calling_aes="PACS1, ORTHANC")
    assert echo(node.port, calling_ae="ORTHANC") == 0
    with pytest.raises(AssociationFailed):
        echo(node.port, calling_ae="INTRUDER")
    with pytest.raises(AssociationFailed):
        send_instances(noise_series(1, size=8), node.port, calling_ae="INTRUDER")
    with pytest.raises(AssociationFailed):
        echo(node.port, calling_ae="PACS1", called_ae="SOMEONE_ELSE")
    assert not list(node.spool.series_root.iterdir())


def test_listening_beyond_loopback_requires_an_allow_list(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, bind_address="0.0.0.0", port=0)
    with pytest.raises(ValueError, match="allow-list"):
        StorageNode(settings.node_config(), Collector()).build_ae()
    settings.allowed_calling_aes = "*"
    StorageNode(settings.node_config(), Collector()).build_ae()  # explicit opt-in to any caller is accepted


def test_instance_without_series_uid_is_refused_and_kept(start_node: NodeFactory) -> None:
    node, collector = start_node()
    (ds,) = noise_series(1, size=8)
    del ds.SeriesInstanceUID
    good = noise_series(2, size=8, seed=4)
    assert send_instances([good[0], ds, good[1]], node.port).statuses == [0, 0xC000, 0], "the others go on"
    (completed,) = collector.wait(1)
    assert completed.instance_count == 2
    kept = list(node.spool.rejected_dir.glob("*.dcm"))
    assert len(kept) == 1 and "SeriesInstanceUID" in kept[0].with_suffix(".json").read_text()
    assert pydicom.dcmread(kept[0]).SOPInstanceUID == ds.SOPInstanceUID


def test_no_patient_data_in_logs_paths_or_state(start_node: NodeFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # everything, pynetdicom's own loggers included
    node, collector = start_node()
    series = noise_series(3, size=8, patient_id=PATIENT_ID)
    assert send_instances(series, node.port).all_ok
    (completed,) = collector.wait(1)
    (bad,) = noise_series(1, size=8, patient_id=PATIENT_ID)
    del bad.SeriesInstanceUID
    send_instances([bad], node.port)
    shutil.rmtree(node.spool.series_root)
    node.spool.series_root.write_text("broken")
    assert send_instances(noise_series(1, size=8, patient_id=PATIENT_ID), node.port).statuses == [0xA700]
    node.spool.series_root.unlink()
    text = caplog.text
    assert "stored instance" in text and "NOT stored" in text and "rejected" in text  # the logs did run
    for secret in (PATIENT_ID, "Synthetic^", "19700101", series[0].SeriesInstanceUID):
        assert secret not in text, f"{secret!r} leaked into the logs"
    names = " ".join(str(p) for p in node.spool.root.rglob("*"))
    assert PATIENT_ID not in names and series[0].SeriesInstanceUID not in names
    assert PATIENT_ID not in str(completed.as_json())


def test_serve_command_answers_echo_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "DBP_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "deepbrainprint.cli.app", "serve", "--port", "0", "--spool", str(tmp_path / "s"),
               "--ae-title", "TESTNODE"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 60
        lines = []
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                break
            lines.append(line)
            match = re.search(r"listening as TESTNODE on 127\.0\.0\.1:(\d+)", line)
            port = int(match.group(1)) if match else None
        assert port, "".join(lines)
        assert echo(port, called_ae="TESTNODE") == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_refuses_all_interfaces_without_an_allow_list(tmp_path: Path) -> None:
    env = {**os.environ, "DBP_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "deepbrainprint.cli.app", "serve", "--bind", "0.0.0.0", "--port", "0"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "allow-list" in done.stderr
