"""A real Orthanc 1.10 process: authentication, forwarding of stable MR series (with retries) to a real storage
SCP, and the verdict write-back through orthanc-api-client."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pydicom
import pytest
import requests
from dbp_orthanc import server, writeback

from fingerprint.imaging.dicom_write import noise_series

pytestmark = pytest.mark.skipif(not Path(server.ORTHANC_BINARY).exists(), reason="Orthanc is not installed")

SCP_AE = "DEEPBRAINPRINT"


def encode(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class RecordingSCP:
    """A bare pynetdicom storage SCP that records what it receives (the product's SCP is tested elsewhere)."""

    def __init__(self, port: int) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.port = port
        self.received: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=SCP_AE)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event) -> int:  # type: ignore[no-untyped-def]
        with self._lock:
            self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


def wait_for(condition, timeout_s: float, interval_s: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())


@pytest.fixture
def orthanc_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start real Orthanc instances on free ports; all are stopped at the end."""
    started: list[server.OrthancInstance] = []

    def start(scp_port: int, **kwargs) -> server.OrthancInstance:  # type: ignore[no-untyped-def]
        instance = server.write_config(
            tmp_path / f"orthanc-{len(started)}", username="radiology", password="s3cret-test",
            http_port=server.free_port(), dicom_port=server.free_port(), scp_ae_title=SCP_AE, scp_port=scp_port,
            stable_age_s=1, **kwargs,
        )
        server.start(instance)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        server.stop(instance, timeout_s=0.0)  # thrown away: no need to wait for a clean shutdown


def test_orthanc_requires_authentication_and_stays_local(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    instance = orthanc_factory(scp_port=server.free_port())
    assert requests.get(f"{instance.url}/system", timeout=5).status_code == 401
    wrong = requests.get(f"{instance.url}/system", auth=("radiology", "wrong"), timeout=5)
    assert wrong.status_code == 401
    system = requests.get(f"{instance.url}/system", auth=("radiology", "s3cret-test"), timeout=5).json()
    assert system["Version"].startswith("1.")
    config = instance.config_path.read_text()
    assert '"RemoteAccessAllowed": false' in config
    assert oct(instance.config_path.stat().st_mode & 0o777) == "0o600"
    # The plugin script, loaded by Orthanc itself, imports Orthanc's built-in module, not a package of ours.
    assert requests.get(f"{instance.url}/deepbrainprint/forwarding", timeout=5).status_code == 401
    status = requests.get(f"{instance.url}/deepbrainprint/forwarding", auth=("radiology", "s3cret-test"), timeout=5)
    assert status.json() == {"pending": 0, "target_modality": "deepbrainprint", "orthanc_module": "built-in"}


def test_stable_mr_series_is_forwarded_to_the_scp(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    scp = RecordingSCP(server.free_port())
    try:
        instance = orthanc_factory(scp_port=scp.port)
        client = writeback.make_client(instance.url, instance.username, instance.password)
        series = noise_series(4, seed=1)
        for ds in series:
            client.upload(encode(ds))
        assert wait_for(lambda: len(scp.received) == 4, timeout_s=20), "series was not forwarded"
        assert sorted(scp.received) == sorted(str(ds.SOPInstanceUID) for ds in series)
    finally:
        scp.stop()


def test_non_mr_series_is_not_forwarded(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    scp = RecordingSCP(server.free_port())
    try:
        instance = orthanc_factory(scp_port=scp.port)
        client = writeback.make_client(instance.url, instance.username, instance.password)
        mr = noise_series(2, seed=2)
        ct = noise_series(2, seed=3)
        for ds in ct:
            ds.Modality = "CT"
        for ds in ct + mr:
            client.upload(encode(ds))
        assert wait_for(lambda: len(scp.received) >= 2, timeout_s=20)

        def both_stable_and_none_pending() -> bool:  # the plugin has seen both series and dropped the CT one
            series = requests.get(f"{instance.url}/series?expand", auth=auth, timeout=5).json()
            status = requests.get(f"{instance.url}/deepbrainprint/forwarding", auth=auth, timeout=5).json()
            return len(series) == 2 and all(s["IsStable"] for s in series) and status["pending"] == 0

        auth = (instance.username, instance.password)
        assert wait_for(both_stable_and_none_pending, timeout_s=20)
        assert sorted(scp.received) == sorted(str(ds.SOPInstanceUID) for ds in mr)
    finally:
        scp.stop()


def test_forwarding_retries_until_the_scp_answers(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    scp_port = server.free_port()
    instance = orthanc_factory(scp_port=scp_port, forward_retry_delays_s=[1, 1, 1, 1, 1, 1, 1, 1])
    client = writeback.make_client(instance.url, instance.username, instance.password)
    series = noise_series(3, seed=4)
    for ds in series:
        client.upload(encode(ds))
    # stable after 1 s, the first attempt fails (nothing listens), then it retries every second
    assert wait_for(lambda: "retry" in instance.log_path.read_text(), timeout_s=20)
    scp = RecordingSCP(scp_port)
    try:
        assert wait_for(lambda: len(scp.received) == 3, timeout_s=20), "series was never forwarded after the SCP came up"
    finally:
        scp.stop()


def test_verdict_written_back_as_series_and_study_metadata(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    instance = orthanc_factory(scp_port=server.free_port())
    client = writeback.make_client(instance.url, instance.username, instance.password)
    series = noise_series(2, seed=5, patient_id="SECRET-PID-42")
    for ds in series:
        client.upload(encode(ds))
    verdict = {
        "verdict": "possible_duplicate", "score": 0.912345, "matched_patient_id_hash": "a1b2c3",
        "model_version": "untrained-0", "neighbours": [{"patient_id_hash": "a1b2c3", "source": {"folder": "/x"}}],
        "source": {"folder": "/spool/abc"},
    }
    report = writeback.write_verdict(client, str(series[0].SeriesInstanceUID), verdict)
    assert report.written
    assert report.labels == [] and "labels skipped" in report.note  # Debian's Orthanc is 1.10: no labels
    stored = writeback.read_verdict(client, str(series[0].SeriesInstanceUID))
    assert stored[writeback.METADATA_VERDICT] == "possible_duplicate"
    assert stored[writeback.METADATA_SCORE] == "0.9123"
    assert stored[writeback.METADATA_BEST_MATCH] == "a1b2c3"
    assert stored[writeback.METADATA_MODEL_VERSION] == "untrained-0"
    assert "/spool" not in stored[writeback.METADATA_DETAIL] and "/x" not in stored[writeback.METADATA_DETAIL]
    study_value = client.studies.get_string_metadata(report.study_orthanc_id, writeback.METADATA_VERDICT)
    assert study_value == "possible_duplicate"


def test_writeback_of_unknown_series_is_skipped_not_retried(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    instance = orthanc_factory(scp_port=server.free_port())
    client = writeback.make_client(instance.url, instance.username, instance.password)
    report = writeback.write_verdict(client, "1.2.3.4.5.6.7", {"verdict": "new_patient"})
    assert not report.written and "not in this Orthanc" in report.note


def test_writeback_to_down_or_refusing_orthanc_is_unavailable(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    instance = orthanc_factory(scp_port=server.free_port())
    refusing = writeback.make_client(instance.url, instance.username, "wrong-password")
    with pytest.raises(writeback.WritebackUnavailable):
        writeback.write_verdict(refusing, "1.2.3", {"verdict": "new_patient"})
    server.stop(instance)
    down = writeback.make_client(instance.url, instance.username, instance.password)
    with pytest.raises(writeback.WritebackUnavailable):
        writeback.write_verdict(down, "1.2.3", {"verdict": "new_patient"})



def test_series_not_yet_forwarded_survive_an_orthanc_restart(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    scp_port = server.free_port()
    instance = orthanc_factory(scp_port=scp_port, forward_retry_delays_s=[600])  # no retry within this test
    client = writeback.make_client(instance.url, instance.username, instance.password)
    series = noise_series(3, seed=11)
    for ds in series:
        client.upload(encode(ds))
    assert wait_for(lambda: "retry 1 in 600" in instance.log_path.read_text(), timeout_s=20)
    server.stop(instance)
    scp = RecordingSCP(scp_port)
    try:
        server.start(instance)  # the pending series is restored and sent at once
        assert wait_for(lambda: len(scp.received) == 3, timeout_s=20), "pending series lost in the restart"
    finally:
        scp.stop()
