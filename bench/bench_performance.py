"""Performance summary: runs the performance benchmarks and collects their headline figures against the targets.

Each benchmark runs as its own process (``nice -n 10``) with the options below, and writes its
``bench/results/<name>.json`` with a top-level ``"headline"`` dict; this script then reads every headline and writes
``bench/results/performance.json`` and ``performance.md``: each figure with its target, pass/fail, and the file it
came from. A figure no benchmark produced is reported as missing, never guessed; a benchmark that failed is named
with its exit status, and its older results (if any) are not used unless ``--reuse``. With ``--reuse`` nothing is
run: the existing results are collected as they are (each file's own date and command say when and how).

Usage::

    nice -n 10 .venv/bin/python bench/bench_performance.py                    # run them all, then collect
    nice -n 10 .venv/bin/python bench/bench_performance.py --reuse            # collect only
    nice -n 10 .venv/bin/python bench/bench_performance.py --only ingest latency
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

#: name -> the benchmark's options for this summary (the quick/performance variants; full runs are their own).
BENCHES: dict[str, list[str]] = {
    "embed": ["--repeats", "5"],
    "slice": ["--repeats", "1"],
    "verify": ["--repeats", "1"],
    "index": ["--performance"],
    "ingest": ["--quick"],
    "latency": ["--quick", "--also-quiet-time", "1"],
    "install": ["--repetitions", "1"],
}

#: key -> (comparison, target, unit, what). The issue's figures first; the others are reported, not judged.
TARGETS: dict[str, tuple[str, float | None, str, str]] = {
    "embed_ms_p50": ("<=", 3.0, "ms", "embedding, one slice, batch 1, 2 CPU threads: the int8 runtime where its "
                     "held-out recall@1 is within 0.005 of fp32 (embed.json `headline_path`)"),
    "embed_ms_p50_fp32": ("", None, "ms", "the same, the default float32 runtime"),
    "slice_s_p50": ("<=", 0.5, "s", "series -> canonical slice, 176-slice 1 mm T1"),
    "verify_s_p50": ("<=", 0.5, "s", "verification of one pair"),
    "search_ms_p50_1m": ("<", 1.0, "ms", "approximate search at 1M fingerprints"),
    "search_recall10_1m": (">=", 0.99, "", "recall@10 against exact at 1M"),
    "ingest_ratio_vs_bare_scp": (">=", 0.9, "", "ingest over 4 associations / bare SCP writing the same files"),
    "e2e_s_p50": ("<", 1.5, "s", "last instance received -> verdict in Orthanc, quiet time excluded, median; the "
                  "default quiet time (5 s), work done ahead during it"),
    "e2e_s_p95": ("<", 3.0, "s", "the same, p95"),
    "e2e_s_p50_without_ahead": ("", None, "s", "the same run, fingerprint_ahead off (nothing before hand-on)"),
    "e2e_s_p50_quiet_1s": ("", None, "s", "quiet time 1 s (the work outlasts it), work ahead on"),
    "e2e_s_p50_quiet_1s_without_ahead": ("", None, "s", "quiet time 1 s, work ahead off"),
    "embed_ms_p50_batch32": ("", None, "ms", "embedding per slice at batch 32, float32"),
    "embed_ms_p50_batch32_int8": ("", None, "ms", "embedding per slice at batch 32, int8"),
    "exact_ms_p50_1m": ("", None, "ms", "exact search at 1M"),
    "ingest_ratio_vs_bare_scp_1_assoc": ("", None, "", "ingest over 1 association / bare SCP writing"),
    "series_per_min_1_worker": ("", None, "/min", "throughput, 1 embedded worker, warm"),
    "series_per_min_2_workers": ("", None, "/min", "throughput, 2 embedded workers, warm"),
    "venv_mb": ("", None, "MB", "CPU-only virtual environment on disk"),
    "help_s_p50": ("", None, "s", "deepbrainprint --help, fresh process"),
}


def written_at(path: Path, data: dict) -> str:
    """When a result file was written: its own ``date`` if it records one; else, for a file as committed, its last
    commit's time (a fresh checkout gives every file the checkout's time); else the file's modification time."""
    if isinstance(data.get("date"), str):
        return data["date"]
    relative = str(path.relative_to(ROOT))
    unchanged = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", relative], cwd=ROOT).returncode == 0
    if unchanged:
        committed = subprocess.run(["git", "log", "-1", "--format=%cI", "--", relative], cwd=ROOT,
                                   capture_output=True, text=True).stdout.strip()
        if committed:
            return f"{committed} (committed)"
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")


def run_bench(name: str, options: list[str]) -> dict:
    """Run ``bench/bench_<name>.py`` with its options; returns how it went (never raises for its failure)."""
    command = ["nice", "-n", "10", sys.executable, f"bench/bench_{name}.py", *options]
    start = time.perf_counter()
    print(f"running {' '.join(command[3:])}", flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 1)
    outcome = {"command": " ".join(["nice -n 10 .venv/bin/python", *command[4:]]), "exit_status": done.returncode,
               "seconds": seconds}
    if done.returncode != 0:
        outcome["error_tail"] = (done.stderr or done.stdout)[-1500:]
        print(f"  {name} FAILED (exit {done.returncode}) after {seconds} s", flush=True)
    else:
        print(f"  {name} done in {seconds} s", flush=True)
    return outcome


def collect(runs: dict[str, dict]) -> dict:
    """Every headline key from every results file, with its source; failed runs contribute nothing."""
    figures: dict[str, dict] = {}
    sources: dict[str, dict] = {}
    for path in sorted(RESULTS.glob("*.json")):
        name = path.stem
        if name == "performance" or (name in runs and runs[name]["exit_status"] != 0):
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        headline = data.get("headline") if isinstance(data, dict) else None
        if not isinstance(headline, dict):
            continue
        command = data.get("command") or data.get("commands") or ""
        sources[name] = {"file": f"bench/results/{path.name}", "command": command,
                         "load_average": data.get("load_average") or data.get("load_average_start"),
                         "modified": written_at(path, data)}
        for key, value in headline.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in figures:
                figures[key] = {"value": value, "source": f"bench/results/{path.name}"}
    return {"figures": figures, "sources": sources}


def judge(figures: dict[str, dict]) -> dict[str, dict]:
    """Each target key with its value (or ``missing``) and pass/fail; other headline keys reported as they are."""
    table: dict[str, dict] = {}
    for key, (op, target, unit, what) in TARGETS.items():
        entry: dict = {"what": what, "unit": unit, "target": f"{op} {target}" if target is not None else None}
        if key not in figures:
            entry.update(value=None, status="missing")
        else:
            value = figures[key]["value"]
            entry.update(value=value, source=figures[key]["source"])
            if target is None:
                entry["status"] = "reported"
            else:
                ok = {"<=": value <= target, "<": value < target, ">=": value >= target}[op]
                entry["status"] = "pass" if ok else "fail"
        table[key] = entry
    for key, figure in figures.items():
        if key not in table:
            table[key] = {"what": "", "unit": "", "target": None, "value": figure["value"],
                          "source": figure["source"], "status": "reported"}
    return table


def markdown(result: dict) -> str:
    lines = [
        "# Performance summary",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpus']} CPUs, {result['machine']['platform']}, Python "
        f"{result['machine']['python']}; load average at start {result['load_average_start']}, at end "
        f"{result['load_average_end']}; {result['date']}.",
        "",
        "| figure | value | target | status | what | source |",
        "|---|---|---|---|---|---|",
    ]
    for key, e in result["table"].items():
        value = "missing" if e["value"] is None else f"{e['value']}{(' ' + e['unit']) if e['unit'] else ''}"
        lines.append(f"| `{key}` | {value} | {e['target'] or ''} | {e['status']} | {e['what']} | "
                     f"{e.get('source', '')} |")
    lines += ["", "| source | written | command | load average at its run |", "|---|---|---|---|"]
    lines += [f"| {src['file']} | {src['modified']} | `{src['command']}` | {src.get('load_average') or 'not recorded'} |"
              for src in result["sources"].values()]
    if result["runs"]:
        lines += ["", "| benchmark run | exit status | seconds |", "|---|---|---|"]
        lines += [f"| `{r['command']}` | {r['exit_status']} | {r['seconds']} |" for r in result["runs"].values()]
    lines += ["", "Each figure is a median from the named file, taken in that benchmark's own run (ratios within "
              "one run); `missing` means no benchmark wrote that headline, `reported` has no target in the issue.",
              ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="run nothing; collect the existing results")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), default=None, help="run only these")
    args = parser.parse_args()
    load_start = [round(x, 1) for x in os.getloadavg()]
    runs: dict[str, dict] = {}
    if not args.reuse:
        for name in args.only or BENCHES:
            runs[name] = run_bench(name, BENCHES[name])
    collected = collect(runs)
    result = {
        "benchmark": "performance summary (issue 16)",
        "command": "nice -n 10 .venv/bin/python bench/bench_performance.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_start": load_start,
        "load_average_end": [round(x, 1) for x in os.getloadavg()],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": runs,
        "sources": collected["sources"],
        "table": judge(collected["figures"]),
    }
    result["headline"] = {k: e["value"] for k, e in result["table"].items() if e["value"] is not None}
    result["missing"] = [k for k, e in result["table"].items() if e["status"] == "missing"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "performance.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "performance.md").write_text(markdown(result))
    print(markdown(result))
    failed = [name for name, r in runs.items() if r["exit_status"] != 0]
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)


if __name__ == "__main__":
    main()
