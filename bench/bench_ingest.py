"""Ingest benchmark: instances per second through our storage SCP against a bare pynetdicom SCP, same run, same data.

Receivers, each fed the same pre-encoded files over the same associations per repetition by the same SCU:
- ``bare_write``: a bare pynetdicom storage SCP that writes each data set as sent to its own file (pynetdicom's own
  example: ``f.write(event.encoded_dataset())``, no fsync), with the same TCP tuning as ours
  (``dicom_node.transport.tune_receiver``): the reference of the headline ratio, "a bare SCP writing the same files";
- ``bare``: the same SCP returning success without touching the data (the ceiling);
- ``bare_stock``: the same SCP as pynetdicom ships it (no TCP tuning), for what the tuning is worth;
- ``node``: ``dicom_node.StorageNode`` as shipped (parse the data set for its series, write-then-rename, fsync the
  file and the folder, series state) -- what a sender waits for before it may forget an instance;
- ``node_nofsync``: the same without fsync, to show what durability itself costs on this disk.
The order of receivers is rotated per repetition so drift (other load on the machine) hits each alike. Reported:
median instances/s per receiver and the ratios node/bare_write, node/bare, node_nofsync/bare, per payload; a payload may be split
over concurrent associations (senders at once: fsyncs of different associations can share journal commits).

Usage::

    nice -n 10 .venv/bin/python bench/bench_ingest.py   # 500 x 64x64, 176 x 256x256, 500 x 64x64 over 4 associations
    nice -n 10 .venv/bin/python bench/bench_ingest.py --repetitions 5 --payloads 500:64

The sender is DCMTK's ``storescu`` in its own process (what Orthanc and most PACS are built on), so the SCP does
not share its Python process and GIL with the sender; without DCMTK the pynetdicom SCU of ``dicom_node.scu`` is used
(and said so in the results). Writes bench/results/ingest.json and ingest.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pynetdicom import AE, evt  # noqa: E402

from deepbrainprint.settings import Settings  # noqa: E402
from dicom_node.scp import STORAGE_SOP_CLASSES, StorageNode, accepted_transfer_syntaxes  # noqa: E402
from dicom_node.scu import send_instances  # noqa: E402
from dicom_node.spool import Spool  # noqa: E402
from dicom_node.transport import tune_receiver  # noqa: E402
from fingerprint.imaging.dicom_write import noise_series  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RECEIVERS = ("bare_write", "bare", "node", "node_nofsync", "bare_stock")


class BareReceiver:
    """pynetdicom's storage SCP reduced to "success": no decoding; with ``folder`` it writes each data set as sent
    to ``<folder>/<SOP Instance UID>.dcm`` (no fsync), otherwise it only counts what it was sent."""

    def __init__(self, tuned: bool = True, folder: Path | None = None) -> None:
        ae = AE(ae_title="DEEPBRAINPRINT")
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, accepted_transfer_syntaxes())
        self.received = 0
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True)
        handlers = [(evt.EVT_C_STORE, self._on_store)]
        if tuned:
            handlers.append((evt.EVT_CONN_OPEN, tune_receiver))
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def _on_store(self, event: Any) -> int:
        if self.folder is not None:
            with open(self.folder / f"{event.request.AffectedSOPInstanceUID}.dcm", "wb") as fh:
                fh.write(event.encoded_dataset())
        self.received += 1
        return 0x0000

    def stored(self) -> int:
        return self.received

    def stop(self) -> None:
        self.server.shutdown()


class NodeReceiver:
    """The shipped StorageNode on a fresh spool; the quiet time is long so no hand-on runs while timing."""

    def __init__(self, spool_dir: Path, fsync: bool) -> None:
        settings = Settings(home=spool_dir, spool_dir=spool_dir, port=0, quiet_time_s=3600)
        self.node = StorageNode(settings.node_config(), lambda completed: None, spool=Spool(spool_dir, fsync=fsync)).start()
        self.port = self.node.port

    def stored(self) -> int:
        return sum(self.node.spool.instance_count(key) for key in self.node.spool.series_keys())

    def stop(self) -> None:
        self.node.stop()


def write_payload(folder: Path, count: int, size: int, series: int = 1) -> list[list[Path]]:
    """Pre-encoded files (the sender only reads bytes), ``series`` series of ``count // series`` instances each."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = []
    for group in range(series):
        paths = []
        for index, ds in enumerate(noise_series(count // series, size=size, seed=size + group)):
            path = folder / f"{group:02d}-{index:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        groups.append(paths)
    return groups


def time_one(receiver_name: str, groups: list[list[Path]], work: Path, tag: str) -> float:
    """Seconds from the first association request to the last release, one concurrent association per group of
    files, through a fresh receiver."""
    if receiver_name.startswith("bare"):
        folder = work / f"bare-{tag}" if receiver_name == "bare_write" else None
        receiver: BareReceiver | NodeReceiver = BareReceiver(tuned=receiver_name != "bare_stock", folder=folder)
    else:
        receiver = NodeReceiver(work / f"spool-{tag}-{receiver_name}", fsync=receiver_name == "node")
    expected = sum(len(files) for files in groups)
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(len(groups)) as pool:
            list(pool.map(lambda files: send(files, receiver.port), groups))
        elapsed = time.perf_counter() - start
        stored = receiver.stored()
    finally:
        receiver.stop()
    if stored != expected:
        raise RuntimeError(f"{receiver_name}: {stored} of {expected} instances arrived")
    return elapsed


def sender_name() -> str:
    return "dcmtk storescu" if shutil.which("storescu") else "pynetdicom SCU (dicom_node.scu)"


def send(files: list[Path], port: int) -> None:
    """All files over one association: DCMTK storescu when installed, else our pynetdicom SCU."""
    if shutil.which("storescu"):
        command = ["storescu", "-aet", "BENCH", "-aec", "DEEPBRAINPRINT", "127.0.0.1", str(port)]
        subprocess.run([*command, *map(str, files)], check=True, capture_output=True)
    else:
        result = send_instances(files, port)
        if not result.all_ok:
            raise RuntimeError(f"not every instance was accepted: {set(result.statuses)}")


def filesystem_of(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=True).stdout
        fields = out.splitlines()[1].split()
        return f"{fields[1]} ({fields[0]})"
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def run(payloads: list[tuple[int, int, int]], repetitions: int, work: Path) -> dict:
    results: dict = {
        "benchmark": "ingest",
        "what": "instances/s over one DICOM association, loopback",
        "sender": sender_name(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "spool_filesystem": filesystem_of(work),
        "load_average": [round(x, 1) for x in os.getloadavg()],  # other work on the machine skews absolute figures
        "repetitions": repetitions,
        "payloads": [],
    }
    for count, size, parallel in payloads:
        label = f"{count}x{size}x{parallel}"
        groups = write_payload(work / f"payload-{label}", count, size, parallel)
        count = sum(len(files) for files in groups)
        bytes_each = groups[0][0].stat().st_size
        times: dict[str, list[float]] = {name: [] for name in RECEIVERS}
        time_one("bare", [groups[0][:5]], work, f"warmup-{label}")  # imports, decoder plugin discovery
        for repetition in range(repetitions):
            shift = repetition % len(RECEIVERS)
            order = RECEIVERS[shift:] + RECEIVERS[:shift]
            for name in order:
                times[name].append(time_one(name, groups, work, f"{label}-{repetition}"))
        medians = {name: statistics.median(values) for name, values in times.items()}
        rates = {name: count / medians[name] for name in RECEIVERS}
        entry = {
            "instances": count,
            "associations": parallel,
            "pixels": f"{size}x{size}",
            "bytes_per_instance": bytes_each,
            "seconds": times,
            "median_seconds": medians,
            "median_instances_per_s": rates,
            "median_mb_per_s": {name: rates[name] * bytes_each / 1e6 for name in RECEIVERS},
            "ratio_node_to_bare_write": rates["node"] / rates["bare_write"],
            "ratio_node_to_bare": rates["node"] / rates["bare"],
            "ratio_node_nofsync_to_bare": rates["node_nofsync"] / rates["bare"],
        }
        results["payloads"].append(entry)
        print(
            f"{count} x {size}x{size} over {parallel} association(s): bare writing {rates['bare_write']:.0f}/s, "
            f"bare {rates['bare']:.0f}/s, node {rates['node']:.0f}/s (x{entry['ratio_node_to_bare_write']:.2f} of bare "
            f"writing, x{entry['ratio_node_to_bare']:.2f} of bare), node without fsync {rates['node_nofsync']:.0f}/s "
            f"(x{entry['ratio_node_nofsync_to_bare']:.2f}), stock pynetdicom {rates['bare_stock']:.0f}/s",
            flush=True,
        )
    return results


def headline(payloads: list[dict]) -> dict[str, float]:
    """The issue's figures: our SCP over a bare SCP writing the same files, on 4 associations and on one (the first
    payload of each kind; a kind not run is left out rather than guessed)."""
    result: dict[str, float] = {}
    for associations, key in ((4, "ingest_ratio_vs_bare_scp"), (1, "ingest_ratio_vs_bare_scp_1_assoc")):
        match = [p for p in payloads if p.get("associations", 1) == associations and "ratio_node_to_bare_write" in p]
        if match:
            result[key] = round(match[0]["ratio_node_to_bare_write"], 3)
    return result


def markdown(results: dict, command: str) -> str:
    lines = [
        "# Ingest: instances per second through the storage SCP",
        "",
        f"Command: `{command}`  ",
        f"Machine: {results['machine']['cpus']} CPUs, Python {results['machine']['python']}; spool on "
        f"{results['spool_filesystem']}; {results['repetitions']} repetitions, medians; loopback; each association "
        f"sends one series; sender: {results['sender']} (own process per association)"
        + (f"; load average at start {results['load_average']}" if "load_average" in results else "")
        + ".",
        "",
        f"Headline: {results.get('headline', {})}",
        "",
        "| payload | associations | bytes/instance | bare SCP writing the files | our SCP (spool, fsync) | ratio "
        "| bare SCP, no disk | ratio | our SCP without fsync | ratio to bare writing | stock pynetdicom SCP "
        "(no TCP tuning, no disk) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in results["payloads"]:
        rate = p["median_instances_per_s"]
        lines.append(
            f"| {p['instances']} x {p['pixels']} | {p.get('associations', 1)} | {p['bytes_per_instance']} | "
            f"{rate['bare_write']:.0f}/s | {rate['node']:.0f}/s | **{p['ratio_node_to_bare_write']:.2f}** | "
            f"{rate['bare']:.0f}/s | {p['ratio_node_to_bare']:.2f} | {rate['node_nofsync']:.0f}/s | "
            f"{rate['node_nofsync'] / rate['bare_write']:.2f} | {rate['bare_stock']:.0f}/s |"
        )
    lines += [
        "",
        "`bare SCP writing the files` is pynetdicom's storage SCP writing each data set as sent to its own file (no "
        "fsync: it answers success before the bytes are durable); `bare SCP, no disk` returns success without "
        "touching the data. `our SCP` parses each data set for its series, writes it to a temp file, fsyncs it, "
        "renames it and fsyncs the folder before answering success (the sender may then forget the instance); the "
        "folder fsyncs of instances arriving at once on concurrent associations are shared (one leader syncs the "
        "renames of all waiting writers, `dicom_node.group_sync`). The no-fsync column shows what durability costs "
        "on this disk. All but the stock SCP acknowledge at once (TCP_QUICKACK re-armed after each read, "
        "TCP_NODELAY): the sender, like Debian's DCMTK and many PACS, runs with Nagle's algorithm on, and the stock "
        "pynetdicom SCP's delayed ACKs then cost about 40 ms per small instance (last column; large instances fill "
        "whole TCP segments, which Nagle does not hold). Time per run includes starting the sender process and the "
        "association.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--payloads",
        nargs="+",
        default=["500:64", "176:256", "1000:64:4"],
        help="COUNT:SIZE[:ASSOCIATIONS]: COUNT instances of SIZE x SIZE pixels, split over concurrent associations "
        "(one series each)",
    )
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="only the headline payloads (500:64 and 1000:64:4)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where spools go (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    chosen = ["500:64", "1000:64:4"] if args.quick else args.payloads
    payloads = [tuple(int(x) for x in (p + ":1").split(":")[:3]) for p in chosen]
    command = "nice -n 10 .venv/bin/python bench/bench_ingest.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        results = run(payloads, args.repetitions, Path(tmp))  # type: ignore[arg-type]
    results["command"] = command.strip()
    results["headline"] = headline(results["payloads"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "ingest.md").write_text(markdown(results, command.strip()))
    print(f"wrote {RESULTS / 'ingest.json'} and ingest.md")


if __name__ == "__main__":
    main()
