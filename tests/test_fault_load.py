"""Load on the service mode: four associations at once carry 2,000 instances while one worker, slower than the
arrival, works through the backlog. Nothing may be lost, the SCP's memory must stay bounded, and the queue depth must
show in the Prometheus metrics on the service's HTTP port while the backlog exists.

What is sent, and why: two real heads (Colin27 at 4 mm, 45 slices each, one man under two PatientIDs: a planted
``new_patient`` and ``possible_duplicate``) and 96 series the reader refuses from their headers (a localiser, a phase
image, too few slices), 256 x 256 pixels each. The refused ones cost the worker milliseconds, so the backlog drains
within the test's time, while their size makes the bytes sent several times the memory bound the SCP is held to.
"""

from __future__ import annotations

import copy
import re
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dbp_orthanc import server
from pydicom.uid import generate_uid
from reliability_log import record_jobs
from sqlalchemy import create_engine, text
from test_modes_service import clean_env, service_settings, wait_for, wait_workers_ready  # noqa: F401 - fixture

from deepbrainprint import supervisor as service
from dicom_node.scu import send_instances
from fingerprint.imaging.dicom_write import series_datasets, write_series
from worker.ledger import DONE, Ledger

#: The refused series, by kind: (ImageType, slices, the reason the archive must store).
REFUSED_KINDS = {
    "localizer": (("ORIGINAL", "PRIMARY", "LOCALIZER"), 20, "localizer"),
    "phase": (("ORIGINAL", "PRIMARY", "P", "PHASE"), 20, "not_t1_brain"),
    "few": (("ORIGINAL", "PRIMARY", "M", "NONE"), 15, "too_few_slices"),
}
ASSOCIATIONS = 4
INSTANCES = 2000
#: The SCP may grow by at most this much while taking the load (MiB); the load itself is several times larger.
SCP_GROWTH_BOUND_MIB = 64.0


def refused_series(out_dir: Path, kind: str, number: int, templates: dict[str, list[pydicom.Dataset]]) -> list[Path]:
    """A series the reader refuses before decoding a pixel, written as files: the kind's template (made once, 256 x
    256 noise) under fresh UIDs and its own fake PatientID."""
    if kind not in templates:
        image_type, slices, _ = REFUSED_KINDS[kind]
        pixels = np.random.default_rng(slices).integers(0, 4000, (slices, 256, 256), dtype=np.uint16)
        templates[kind] = series_datasets(sitk.GetImageFromArray(pixels), patient_id="LOAD-R", image_type=image_type,
                                          series_description=f"load {kind}")
    study_uid, series_uid = generate_uid(), generate_uid()
    out_dir.mkdir(parents=True)
    paths = []
    for index, template in enumerate(templates[kind]):
        ds = copy.copy(template)  # shallow: the pixel bytes are shared, the changed elements are replaced
        ds.file_meta = copy.deepcopy(template.file_meta)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study_uid, series_uid, f"LOAD-R{number}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(out_dir / f"{index:04d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def head_at_4mm(small_heads: dict) -> sitk.Image:
    head = small_heads["colin"]
    size = [int(round(n * s / 4.0)) for n, s in zip(head.GetSize(), head.GetSpacing())]
    return sitk.Resample(head, size, sitk.Transform(), sitk.sitkLinear, head.GetOrigin(), (4.0, 4.0, 4.0),
                         head.GetDirection(), 0.0, sitk.sitkFloat32)


def plan_load(folder: Path, small_heads: dict) -> tuple[list[list[list[Path]]], dict[str, str]]:
    """The series each sender sends (2,000 instances in all) and the planted outcome of every series by its UID."""
    head = head_at_4mm(small_heads)
    per_sender: list[list[list[Path]]] = [[] for _ in range(ASSOCIATIONS)]
    expected: dict[str, str] = {}
    for number, patient in enumerate(("LOAD-HEAD-1", "LOAD-HEAD-2")):
        files = write_series(head, folder / f"head-{number}", patient_id=patient)
        per_sender[number].append(files)
        expected[str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)] = "head"
    number, templates = 0, {}
    for queue in per_sender:
        while (room := INSTANCES // ASSOCIATIONS - sum(map(len, queue))) > 0:
            kind = ("localizer", "phase")[number % 2] if room >= 40 or room == 20 else "few"
            series = refused_series(folder / f"refused-{number}", kind, number, templates)
            queue.append(series)
            expected[str(pydicom.dcmread(series[0], stop_before_pixels=True).SeriesInstanceUID)] = REFUSED_KINDS[kind][2]
            number += 1
    assert sum(len(series) for queue in per_sender for series in queue) == INSTANCES
    return per_sender, expected


def scrape(port: int) -> dict[str, float]:
    """The service's /metrics, parsed: ``{'dbp_jobs{state="queued"}': 3.0, ...}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+(?:\{[^}]*\})?) (\S+)$", body, re.M)}


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak since the process started) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


class MetricsWatcher(threading.Thread):
    """Scrapes /metrics every quarter second and keeps the largest queue depth seen (ledger ``queued`` jobs)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.max_queued, self.scrapes, self.errors = port, 0.0, 0, 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.25):
            try:
                values = scrape(self.port)
            except OSError:
                self.errors += 1
                continue
            self.scrapes += 1
            self.max_queued = max(self.max_queued, values.get('dbp_jobs{state="queued"}', 0.0))


@pytest.mark.slow
def test_four_associations_2000_instances_one_slow_worker_nothing_lost_memory_bounded_queue_visible(  # type: ignore[no-untyped-def]
    tmp_path, redis_url, small_heads, clean_env
) -> None:
    """Four senders keep an association open each at all times (one association per series, as PACS send), 2,000
    instances in all; one worker (one process) is slower than they are. Every series ends in its planted verdict or
    stated rejection, recorded once; the SCP grows by less than the bound; ``dbp_jobs{state="queued"}`` on the
    service's HTTP port is above 0 during the backlog and 0 once it is worked off."""
    from werkzeug.security import generate_password_hash

    http_port = server.free_port()
    settings = service_settings(tmp_path / "home", redis_url, dashboard_port=http_port, quiet_time_s=1.0,
                                dashboard_users=f"ops:{generate_password_hash('x')}")
    started = service.up(settings, workers=1, pool="prefork", concurrency=1)
    ledger = Ledger(settings.store_url)
    watcher = MetricsWatcher(http_port)
    statuses: list[int] = []
    try:
        per_sender, expected = plan_load(tmp_path / "load", small_heads)  # while the service starts
        wait_workers_ready(settings, ["worker-1"])
        assert wait_for(lambda: _answers(http_port), 120), "the service's HTTP port does not answer"
        baseline = memory_kib(started["scp"])
        watcher.start()

        def sender(number: int) -> None:
            for series in per_sender[number]:  # a lost C-STORE response costs 5 s, not 30, before associating again
                statuses.extend(send_instances(series, settings.port, called_ae=settings.ae_title,
                                               calling_ae=f"LOAD-{number}", response_timeout_s=5.0).statuses)

        began = time.monotonic()
        threads = [threading.Thread(target=sender, args=(n,)) for n in range(ASSOCIATIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        sent_s = time.monotonic() - began
        finished_when_sent = len(finished(ledger))
        peak = memory_kib(started["scp"])

        def drained() -> bool:  # a resent instance reopens its series: settled only once the spool is empty too
            counts = ledger.counts()
            return (counts["queued"] + counts["running"] == 0 and set(finished(ledger)) >= set(expected)
                    and scrape(http_port)["dbp_spool_series_pending"] == 0)

        all_drained = wait_for(drained, 240, 1.0)
        drained_s = time.monotonic() - began
        watcher.halt.set()
        watcher.join(10)
        after = scrape(http_port)
        outcomes = finished(ledger)
        growth_mib = (peak["VmHWM"] - baseline["VmRSS"]) / 1024
        sent_mib = sum(path.stat().st_size for queue in per_sender for series in queue for path in series) / 2**20
        print(f"{INSTANCES} instances ({sent_mib:.0f} MiB) from {ASSOCIATIONS} senders in {sent_s:.1f} s; "
              f"{finished_when_sent} of {len(expected)} series done when the last was sent, all in {drained_s:.1f} s; "
              f"SCP RSS {baseline['VmRSS'] / 1024:.0f} MiB before, peak {peak['VmHWM'] / 1024:.0f} MiB "
              f"(+{growth_mib:.0f}); largest queue depth seen {watcher.max_queued:.0f} in {watcher.scrapes} scrapes")
        record_jobs("load: 4 associations at once, 2,000 instances, slow worker", ledger.all_jobs(), sent=len(expected),
                    scp_peak_rss_mib=round(peak["VmHWM"] / 1024, 1), scp_growth_mib=round(growth_mib, 1),
                    sent_mib=round(sent_mib, 1), max_queue_depth=watcher.max_queued, drained_s=round(drained_s, 1))
        assert all_drained, ledger.counts()
    finally:
        watcher.halt.set()
        service.down(settings)
        jobs = ledger.all_jobs()
        ledger.close()
    # Every instance accepted; every series its planted outcome, one row in the store.
    assert len(statuses) == INSTANCES and set(statuses) == {0}, sorted(set(statuses))
    assert sorted(outcomes) == sorted(expected) and not any(job.state == "failed" for job in jobs)
    heads = sorted(outcomes[uid]["verdict"] for uid, kind in expected.items() if kind == "head")
    assert heads == ["new_patient", "possible_duplicate"], heads
    wrong = {uid: outcomes[uid].get("rejected") for uid, kind in expected.items()
             if kind != "head" and outcomes[uid].get("rejected") != kind}
    assert not wrong, wrong
    engine = create_engine(settings.resolved_store_url)
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT series_instance_uid, count(*) FROM dbp_series GROUP BY 1")).all())
    engine.dispose()
    assert rows == {uid: 1 for uid in expected}
    # The worker was slower than the arrival: a backlog existed when the senders were done, and the metric showed it.
    assert finished_when_sent < len(expected), "the worker kept up: no backlog was tested"
    assert watcher.max_queued > 0 and watcher.scrapes >= 4
    assert after['dbp_jobs{state="queued"}'] == 0 and after['dbp_jobs{state="running"}'] == 0
    assert after['dbp_jobs{state="done"}'] == len(jobs) and after["dbp_spool_series_pending"] == 0
    # Bounded memory: the SCP holds an instance at a time per association, not the load (several times the bound).
    assert sent_mib > 3 * SCP_GROWTH_BOUND_MIB
    assert growth_mib < SCP_GROWTH_BOUND_MIB, f"the SCP grew by {growth_mib:.0f} MiB taking {sent_mib:.0f} MiB"


def finished(ledger: Ledger) -> dict[str, dict]:
    """The verdict of every finished series by its SeriesInstanceUID (the newest job's, should a series have come in
    twice: late instances make a new generation, recorded over the first in the store)."""
    return {job.verdict["series_instance_uid"]: job.verdict
            for job in sorted(ledger.all_jobs(), key=lambda job: job.updated_at)
            if job.state == DONE and job.verdict}


def _answers(port: int) -> bool:
    try:
        return "dbp_jobs" in "".join(scrape(port))
    except OSError:
        return False
