"""End-to-end benchmark: last instance received -> verdict written back to a real Orthanc, and series per minute.

Real heads (Colin27; MNI152 when nilearn has it, or the shared real people) are written as MR series
(``fingerprint.imaging.dicom_write``) at several orientations under distinct PatientIDs and uploaded to a real
Orthanc (``dbp_orthanc.server``, own ports and folder). Orthanc's forwarding plugin sends each stable series to our
storage SCP over DICOM; the embedded worker fingerprints, verifies, decides, records, and writes the verdict back to
that Orthanc as metadata: the whole product path. For each series, from the ledger's and the spool's own clocks:

- ``e2e``: last instance received by our SCP -> verdict written to Orthanc, less the configured quiet time (a
  setting, like Orthanc's StableAge; the completion tracker's polling after it does count);
- ``quiet_wait``: last instance received -> series handed on (ledger row created): the quiet time plus polling;
- ``processing``: hand-on -> verdict written back (read, slice, embed, verify, decide, record, write back).

As shipped, an idle embedded worker fingerprints a series once its sender releases the association, while the quiet
time runs (``fingerprint_ahead``); the same run measures the latency again with that off (the *before* rows).

Latency is measured one series at a time with ONE worker (the first series, a cold start, is reported apart).
Throughput: with the workers warm, ``--throughput-series`` series are received and held, then queued at once;
series per minute = series / (queued -> last verdict written back), with 1 and then 2 embedded workers.
``--profile`` also profiles (cProfile) the hot path of one warm series in the main thread: hand-on (ledger row and
content hash), claim, process, write-back; the top of it goes to bench/results/profile_e2e.txt under ``--label``.

Usage::

    nice -n 10 .venv/bin/python bench/bench_latency.py                    # 2 x 8 series, quiet time 5 s, 6 for throughput
    nice -n 10 .venv/bin/python bench/bench_latency.py --quick --also-quiet-time 1   # 2 x 4 series, 4; and at 1 s
    nice -n 10 .venv/bin/python bench/bench_latency.py --profile --label after

Writes bench/results/latency.json and latency.md.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dbp_orthanc import server as orthanc_server  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from dbp_orthanc import writeback  # noqa: E402
from deepbrainprint.demo import load_heads  # noqa: E402
from deepbrainprint.settings import load_settings  # noqa: E402
from deepbrainprint.wiring import release_handler  # noqa: E402
from dicom_node.scp import StorageNode  # noqa: E402
from dicom_node.types import CompletedSeries  # noqa: E402
from worker.dispatch import submit_completed_series  # noqa: E402
from worker.embedded import EmbeddedWorker  # noqa: E402
from worker.ledger import WRITEBACK_DONE, WRITEBACK_SKIPPED  # noqa: E402
from worker.steps import WorkerContext, process_job, submit_to_ledger, writeback_job  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ORIENTATIONS = ("axial", "sagittal", "coronal")
WRITTEN_BACK = (WRITEBACK_DONE, WRITEBACK_SKIPPED)
SCP_AE = "DEEPBRAINPRINT"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(values: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(values), 3), "p95_s": round(percentile(values, 0.95), 3),
            "min_s": round(min(values), 3), "max_s": round(max(values), 3)}


class Gate:
    """The SCP's hand-on callback: passes series to the ledger, or holds them (throughput runs queue them at once)."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.holding = False
        self.held: list[CompletedSeries] = []
        self.lock = threading.Lock()

    def __call__(self, completed: CompletedSeries) -> None:
        with self.lock:
            if self.holding:
                self.held.append(completed)
                return
        submit_completed_series(self.config, completed)

    def release(self) -> list[CompletedSeries]:
        with self.lock:
            held, self.held, self.holding = self.held, [], False
        for completed in held:
            submit_completed_series(self.config, completed)
        return held


class ReleaseHint:
    """The SCP's release callback as the product wires it (``deepbrainprint.wiring.release_handler``: an idle
    embedded worker fingerprints a released series during its quiet time), switchable for the before/after rows."""

    def __init__(self, settings: Any) -> None:
        self.handler = release_handler(settings)
        self.enabled = True

    def __call__(self, series_key: str, folder: Path) -> None:
        if self.enabled and self.handler is not None:
            self.handler(series_key, folder)


class Bench:
    """One archive, one Orthanc, one SCP; series uploaded to Orthanc, forwarded to us, written back."""

    def __init__(self, work: Path, quiet_time_s: float) -> None:
        self.work = work
        self.quiet_time_s = quiet_time_s
        http_port = orthanc_server.free_port()
        self.settings = load_settings(
            home=work / "home", port=0, quiet_time_s=quiet_time_s, broker_url="", ae_title=SCP_AE,
            orthanc_url=f"http://127.0.0.1:{http_port}", orthanc_username="bench", orthanc_password="bench-only",
        )
        self.config = self.settings.worker_config()
        self.gate = Gate(self.config)
        self.hint = ReleaseHint(self.settings)
        self.node = StorageNode(self.settings.node_config(), self.gate, on_series_released=self.hint).start()
        self.orthanc = orthanc_server.write_config(
            work / "orthanc", username="bench", password="bench-only", http_port=http_port,
            dicom_port=orthanc_server.free_port(), scp_ae_title=SCP_AE, scp_port=self.node.port, stable_age_s=1,
        )
        orthanc_server.start(self.orthanc)
        self.client = writeback.make_client(self.orthanc.url, "bench", "bench-only")
        self.heads = load_heads()
        self.names = [name for name, head in self.heads.items() if not isinstance(head, Path)]  # volumes, not folders
        self.workers: list[EmbeddedWorker] = []
        self.number = 0

    def add_worker(self) -> EmbeddedWorker:
        worker = EmbeddedWorker(self.config).start()
        self.workers.append(worker)
        return worker

    def upload_next(self) -> dict[str, Any]:
        """Write the next head as a series and upload it to Orthanc (which forwards it to our SCP once stable)."""
        from fingerprint.imaging.dicom_write import write_series

        number = self.number
        self.number += 1
        head = self.names[number % len(self.names)]
        orientation = ORIENTATIONS[number % len(ORIENTATIONS)]
        files = write_series(self.heads[head], self.work / f"s{number}", patient_id=f"BENCH-{number}",
                             orientation=orientation, study_date="20240101")
        for path in files:
            self.client.upload(path.read_bytes())
        return {"head": head, "orientation": orientation, "instances": len(files)}

    def written_back(self) -> list[Any]:
        return [j for j in self.workers[0].ctx.ledger.all_jobs() if j.writeback_state in WRITTEN_BACK]

    def wait_written_back(self, count: int, timeout_s: float = 900) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = self.written_back()
            if len(done) >= count:
                return done
            time.sleep(0.02)
        raise RuntimeError(f"only {len(self.written_back())} of {count} verdicts written back in {timeout_s} s")

    def latency_samples(self, series: int, alternate: bool = False) -> list[dict[str, Any]]:
        """``series`` series one at a time; ``alternate``: fingerprint ahead on and off in the order on, off, off, on
        (repeated), so both see the same mix of heads and, on average, the same growing archive."""
        samples = []
        for number in range(series):
            if alternate:
                self.hint.enabled = number % 4 in (0, 3)
            before = {j.job_key for j in self.written_back()}
            info = self.upload_next()
            done = self.wait_written_back(len(before) + 1)
            job = next(j for j in done if j.job_key not in before)
            last_received = datetime.fromisoformat(job.completed["last_received"]).timestamp()
            total = job.updated_at - last_received
            samples.append({
                **info, "fingerprint_ahead": self.hint.enabled,
                "verdict": (job.verdict or {}).get("verdict"), "writeback": job.writeback_state,
                "quiet_wait_s": round(job.created_at - last_received, 3),
                "processing_s": round(job.updated_at - job.created_at, 3),
                "total_s": round(total, 3), "e2e_s": round(total - self.quiet_time_s, 3),
            })
            print(f"series {len(samples)}: {samples[-1]}", file=sys.stderr, flush=True)
        return samples

    def throughput(self, series: int) -> dict[str, Any]:
        """Receive ``series`` series and hold them, then queue them at once: series/min through warm workers."""
        before = len(self.written_back())
        self.gate.holding = True
        for _ in range(series):
            self.upload_next()
        deadline = time.monotonic() + 900
        while len(self.gate.held) < series and time.monotonic() < deadline:
            time.sleep(0.05)
        start = time.time()
        self.gate.release()
        self.wait_written_back(before + series)
        elapsed = time.time() - start
        return {"workers": len(self.workers), "series": series, "seconds": round(elapsed, 2),
                "series_per_min": round(series / elapsed * 60, 2)}

    def profile_one(self) -> str:
        """cProfile of one warm series' hot path in this thread (workers stopped): hand-on, claim, process, write-back."""
        for worker in self.workers:
            worker.stop()
        self.workers = []
        ctx = WorkerContext(self.config)
        texts = []
        for round_number in range(2):  # the first warms the model and the index; the second is profiled
            self.gate.holding = True
            self.upload_next()
            deadline = time.monotonic() + 300
            while not self.gate.held and time.monotonic() < deadline:
                time.sleep(0.05)
            completed = self.gate.held.pop()
            self.gate.holding = False
            profiler = cProfile.Profile()
            profiler.enable()
            started = time.perf_counter()
            job_key, _ = submit_to_ledger(ctx, completed, "embedded")
            job = ctx.ledger.claim_next()
            assert job is not None and job.job_key == job_key
            process_job(ctx, job)
            writeback_job(ctx, job_key)
            elapsed = time.perf_counter() - started
            profiler.disable()
            if round_number == 1:
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats("cumulative").print_stats(45)
                out.write("Outside slice, embedding and verification (hand-on, ledger, store, index, write-back):\n")
                stats.print_stats(r"worker/|dicom_node/|dbp_orthanc/|identity/store|identity/index|identity/archive", 30)
                texts.append(f"one warm series, hand-on to write-back: {elapsed:.3f} s in the profiled thread\n")
                texts.append(out.getvalue())
        ctx.close()
        return "".join(texts)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.node.stop()
        orthanc_server.stop(self.orthanc)


def keep_store(bench: Bench, target: Path) -> None:
    """Copy the bench archive's SQLite store (a consistent online backup) for ``bench_scale.py`` to measure rows."""
    import sqlite3

    source = make_url(bench.config.archive.store_url).database
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def latency_at(series_count: int, quiet_time_s: float) -> dict[str, Any]:
    """Latency only, at another quiet time (its own archive, Orthanc and SCP): cold start, then ``2 * series_count``
    warm series with the work ahead on and off in turn."""
    work = Path(tempfile.mkdtemp(prefix="dbp-bench-latency-"))
    bench = Bench(work, quiet_time_s)
    try:
        bench.add_worker()
        bench.latency_samples(1)
        everything = bench.latency_samples(2 * series_count, alternate=True)
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    on = [s["e2e_s"] for s in everything if s["fingerprint_ahead"]]
    off = [s["e2e_s"] for s in everything if not s["fingerprint_ahead"]]
    return {"quiet_time_s": quiet_time_s, "e2e_warm": summarise(on), "e2e_warm_without_ahead": summarise(off),
            "samples": everything}


def run(series_count: int, quiet_time_s: float, throughput_series: int, profile: bool,
        store_copy: Path | None = None, other_quiet_time_s: float | None = None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="dbp-bench-latency-"))
    bench = Bench(work, quiet_time_s)
    profile_text = ""
    try:
        bench.add_worker()
        bench.latency_samples(1)  # the cold start: model loading, first index (reported apart)
        cold = bench.written_back()
        everything = bench.latency_samples(2 * series_count, alternate=True)
        samples = [s for s in everything if s["fingerprint_ahead"]]  # as shipped: fingerprinted during the quiet time
        samples_before = [s for s in everything if not s["fingerprint_ahead"]]  # nothing starts before hand-on
        bench.hint.enabled = False  # throughput queues held series: nothing may start before the clock
        throughput = [bench.throughput(throughput_series)]
        bench.add_worker()
        bench.latency_samples(2)  # warms the second worker (one of the two series is very likely its)
        throughput.append(bench.throughput(throughput_series))
        if profile:
            profile_text = bench.profile_one()
        if store_copy is not None:
            keep_store(bench, store_copy)
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    warm = samples
    result = {
        "benchmark": "end to end: last instance received -> verdict written back to Orthanc (embedded mode)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "torch_threads": _torch_threads()},
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quiet_time_s": quiet_time_s,
        "series": len(samples) + len(samples_before),
        "e2e_warm": summarise([s["e2e_s"] for s in warm]),
        "total_warm": summarise([s["total_s"] for s in warm]),
        "quiet_wait": summarise([s["quiet_wait_s"] for s in warm]),
        "processing_warm": summarise([s["processing_s"] for s in warm]),
        "cold_start_e2e_s": round(cold[0].updated_at - datetime.fromisoformat(cold[0].completed["last_received"])
                                  .timestamp() - quiet_time_s, 3),
        "before_fingerprint_ahead": {
            "what": "the same run, the same warm worker, with fingerprint_ahead off (nothing starts before hand-on)",
            "e2e_warm": summarise([s["e2e_s"] for s in samples_before]),
            "processing_warm": summarise([s["processing_s"] for s in samples_before]),
            "samples": samples_before,
        },
        "verdicts": {"with_ahead": [s["verdict"] for s in samples], "without": [s["verdict"] for s in samples_before]},
        "throughput": throughput,
        "samples": samples,
        "headline": {
            "e2e_s_p50": summarise([s["e2e_s"] for s in warm])["median_s"],
            "e2e_s_p95": summarise([s["e2e_s"] for s in warm])["p95_s"],
            "e2e_s_p50_without_ahead": summarise([s["e2e_s"] for s in samples_before])["median_s"],
            "e2e_s_p95_without_ahead": summarise([s["e2e_s"] for s in samples_before])["p95_s"],
            "series_per_min_1_worker": throughput[0]["series_per_min"],
            "series_per_min_2_workers": throughput[1]["series_per_min"],
        },
    }
    if other_quiet_time_s is not None:
        other = latency_at(series_count, other_quiet_time_s)
        result["at_other_quiet_time"] = other
        label = f"{other_quiet_time_s:g}".replace(".", "_")
        result["headline"][f"e2e_s_p50_quiet_{label}s"] = other["e2e_warm"]["median_s"]
        result["headline"][f"e2e_s_p50_quiet_{label}s_without_ahead"] = other["e2e_warm_without_ahead"]["median_s"]
    return {**result, "profile": profile_text}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "# End to end: last instance received -> verdict written back to Orthanc (embedded mode)",
        "",
        f"`{result['command']}` on {result['machine']['cpus']} CPUs (torch threads: "
        f"{result['machine']['torch_threads']}), load average {result['load_average']}, {result['date']}; "
        f"{result['series']} warm series one at a time through a real Orthanc (fingerprint ahead on, off, off, on, ...), "
        f"quiet time {result['quiet_time_s']} s. Verdicts, ahead on: {result['verdicts']['with_ahead']}; off: "
        f"{result['verdicts']['without']}.",
        "",
        f"Headline: {result['headline']}",
        "",
        "| part (warm worker) | median (s) | p95 (s) | min (s) | max (s) |",
        "|---|---|---|---|---|",
    ]
    for part in ("e2e_warm", "total_warm", "quiet_wait", "processing_warm"):
        s = result[part]
        lines.append(f"| {part} | {s['median_s']} | {s['p95_s']} | {s['min_s']} | {s['max_s']} |")
    other = result.get("at_other_quiet_time")
    if other is not None:
        for part, label in (("e2e_warm", "e2e_warm"), ("e2e_warm_without_ahead", "e2e_warm, fingerprint_ahead off")):
            s = other[part]
            lines.append(f"| {label}, quiet time {other['quiet_time_s']:g} s | {s['median_s']} | {s['p95_s']} | "
                         f"{s['min_s']} | {s['max_s']} |")
    before = result["before_fingerprint_ahead"]
    for part in ("e2e_warm", "processing_warm"):
        s = before[part]
        lines.append(f"| {part}, fingerprint_ahead off (before) | {s['median_s']} | {s['p95_s']} | {s['min_s']} | "
                     f"{s['max_s']} |")
    lines += ["", "| embedded workers | series | seconds | series per minute |", "|---|---|---|---|"]
    for t in result["throughput"]:
        lines.append(f"| {t['workers']} | {t['series']} | {t['seconds']} | {t['series_per_min']} |")
    lines += ["", "`e2e` is last instance received by our SCP -> verdict written to Orthanc, less the configured quiet "
              "time (polling after it counts); `quiet_wait` is the quiet time plus polling; `processing` is hand-on "
              "-> verdict written back. The first series (cold start: model loading) is left out "
              f"({result['cold_start_e2e_s']} s). Rows marked *before*: the same run and warm worker with "
              "`fingerprint_ahead` off, half the series (in the order on, off, off, on); otherwise (as shipped) the idle worker fingerprints a series once its sender "
              "releases the association, during the quiet time, and the hand-on takes that result if the folder is "
              "unchanged (`fingerprint/identity/ahead.py`); the verdict is still decided and written only after the "
              "quiet time. Throughput: series received and held, then queued at once to warm workers (fingerprint "
              "ahead off); queued -> last verdict written back.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--throughput-series", type=int, default=6)
    parser.add_argument("--quiet-time", type=float, default=5.0, help="the SCP's quiet time (the product's default)")
    parser.add_argument("--also-quiet-time", type=float, default=None,
                        help="latency measured again at this quiet time (own archive and Orthanc; no throughput)")
    parser.add_argument("--quick", action="store_true", help="4 series for latency, 4 for each throughput run")
    parser.add_argument("--profile", action="store_true", help="also write a cProfile to profile_e2e.txt")
    parser.add_argument("--label", default="after", help="the profile's section in profile_e2e.txt")
    parser.add_argument("--keep-store", type=Path, default=None,
                        help="copy the archive's SQLite store here (the measured archive bench_scale.py reads)")
    args = parser.parse_args()
    series, throughput_series = (4, 4) if args.quick else (args.series, args.throughput_series)
    result = run(series, args.quiet_time, throughput_series, args.profile, args.keep_store, args.also_quiet_time)
    result["command"] = "nice -n 10 .venv/bin/python bench/bench_latency.py " + " ".join(sys.argv[1:])
    profile_text = result.pop("profile")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, RESULTS / "latency.md")
    if profile_text:
        write_profile(RESULTS / "profile_e2e.txt", args.label, result["command"], profile_text)
    print((RESULTS / "latency.md").read_text())


def write_profile(path: Path, label: str, command: str, text: str) -> None:
    """Replace this label's section of profile_e2e.txt, keep the others (``before`` and ``after`` side by side)."""
    sections: dict[str, str] = {}
    if path.exists():
        current = None
        for line in path.read_text().splitlines(keepends=True):
            if line.startswith("=== "):
                current = line[4:].strip()
                sections[current] = ""
            elif current is not None:
                sections[current] += line
    sections[label] = f"{command}\n{text}\n"
    path.write_text("".join(f"=== {name}\n{body}" for name, body in sorted(sections.items())))


if __name__ == "__main__":
    main()
