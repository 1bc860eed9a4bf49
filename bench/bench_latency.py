"""Latency benchmark: time from the last instance of a series received to its verdict written, embedded mode.

Real heads (Colin27; MNI152 when nilearn has it) are written as MR series (``fingerprint.imaging.dicom_write``) at several
orientations under distinct PatientIDs and sent, one series at a time, over a real DICOM association to the
in-process storage SCP; the in-process worker fingerprints, decides and records. For each series:

- ``quiet_wait``: last instance received (the spool's own timestamp) -> series handed on (ledger row created). This
  is the configured quiet time plus the completion tracker's polling; it is a setting, reported apart;
- ``processing``: hand-on -> verdict recorded in the ledger (read volume, canonical slice, ResNet-18, decide, record);
- ``total``: the sum, what a radiologist waits.

Medians and p95 over the series. Usage::

    nice -n 10 .venv/bin/python bench/bench_latency.py                      # 6 series, quiet time 1 s
    nice -n 10 .venv/bin/python bench/bench_latency.py --series 10 --quiet-time 2

Writes bench/results/latency.json and latency.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepbrainprint.demo import load_heads  # noqa: E402
from deepbrainprint.settings import load_settings  # noqa: E402
from dicom_node.scp import StorageNode  # noqa: E402
from dicom_node.scu import send_instances  # noqa: E402
from worker.dispatch import submit_completed_series  # noqa: E402
from worker.embedded import EmbeddedWorker  # noqa: E402
from worker.ledger import DONE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ORIENTATIONS = ("axial", "sagittal", "coronal")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(values: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(values), 3), "p95_s": round(percentile(values, 0.95), 3),
            "min_s": round(min(values), 3), "max_s": round(max(values), 3)}


def run(series_count: int, quiet_time_s: float) -> dict:
    from fingerprint.imaging.dicom_write import write_series

    work = Path(tempfile.mkdtemp(prefix="dbp-bench-latency-"))
    settings = load_settings(home=work / "home", port=0, quiet_time_s=quiet_time_s, broker_url="", orthanc_url="")
    heads = load_heads()
    names = [n for n in heads if not n.startswith("real")] or list(heads)
    worker = EmbeddedWorker(settings.worker_config(), poll_interval_s=0.5).start()
    node = StorageNode(settings.node_config(), lambda completed: submit_completed_series(settings.worker_config(), completed)).start()
    samples = []
    try:
        for number in range(series_count):
            head = names[number % len(names)]
            orientation = ORIENTATIONS[number % len(ORIENTATIONS)]
            files = write_series(heads[head], work / f"s{number}", patient_id=f"BENCH-{number}",
                                 orientation=orientation, study_date="20240101")
            before = worker.ctx.ledger.counts()[DONE]
            send_instances(files, node.port, called_ae=settings.ae_title)
            deadline = time.monotonic() + 600
            while worker.ctx.ledger.counts()[DONE] <= before and time.monotonic() < deadline:
                time.sleep(0.05)
            job = max(worker.ctx.ledger.all_jobs(), key=lambda j: j.updated_at)
            last_received = datetime.fromisoformat(job.completed["last_received"]).timestamp()
            samples.append({
                "head": head, "orientation": orientation, "instances": len(files),
                "verdict": (job.verdict or {}).get("verdict"),
                "quiet_wait_s": job.created_at - last_received,
                "processing_s": job.updated_at - job.created_at,
                "total_s": job.updated_at - last_received,
            })
            print(f"series {number}: {samples[-1]}", file=sys.stderr)
    finally:
        node.stop()
        worker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "benchmark": "latency, last instance received -> verdict written (embedded mode)",
        "command": " ".join(["bench/bench_latency.py", "--series", str(series_count), "--quiet-time",
                             str(quiet_time_s)]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "torch_threads": _torch_threads()},
        "quiet_time_s": quiet_time_s,
        "series": len(samples),
        "total": summarise([s["total_s"] for s in samples]),
        "quiet_wait": summarise([s["quiet_wait_s"] for s in samples]),
        "processing": summarise([s["processing_s"] for s in samples]),
        # The first series also loads the model and opens the archive: a worker's cold start, shown apart.
        "total_warm": summarise([s["total_s"] for s in samples[1:]] or [samples[0]["total_s"]]),
        "cold_start_total_s": round(samples[0]["total_s"], 3),
        "samples": samples,
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "# Latency: last instance received -> verdict written (embedded mode)",
        "",
        f"`{result['command']}` on {result['machine']['cpus']} CPUs (torch threads: "
        f"{result['machine']['torch_threads']}); {result['series']} series, quiet time {result['quiet_time_s']} s.",
        "",
        "| part | median (s) | p95 (s) | min (s) | max (s) |",
        "|---|---|---|---|---|",
    ]
    for part in ("total", "total_warm", "quiet_wait", "processing"):
        s = result[part]
        lines.append(f"| {part} | {s['median_s']} | {s['p95_s']} | {s['min_s']} | {s['max_s']} |")
    lines += ["", "`quiet_wait` is the configured quiet time (a setting, like Orthanc's StableAge) plus polling; "
              "`processing` is what the worker itself takes. `total_warm` leaves out the first series, which also loads "
              f"the model (cold start: {result['cold_start_total_s']} s).", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=6)
    parser.add_argument("--quiet-time", type=float, default=1.0)
    args = parser.parse_args()
    result = run(args.series, args.quiet_time)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, RESULTS / "latency.md")
    print((RESULTS / "latency.md").read_text())


if __name__ == "__main__":
    main()
