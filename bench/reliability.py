"""Reliability bench: rerun the fault and bad-input tests and count what went in and how each item ended.

One command reruns, in one pytest process, every fault test on real processes (worker and whole worker host killed,
Redis down, SCP killed with a full spool, a broker restart that lost a message, Orthanc down during write-back in both
modes, PostgreSQL restarted during work, the spool's disk full, the load of four associations and 2,000 instances)
and the fuzzed bad-input suite. Each test appends its counts to the file named by ``DBP_RELIABILITY_LOG``
(``tests/reliability_log.py``); this script sums them with pytest's own verdict on each test (JUnit XML):

- ``series_sent``, ``verdicts``, ``rejected``, ``lost``: series the fault tests sent, those that ended in a verdict,
  in a stated rejection, and neither (sent less the other two). Tests of the DICOM node alone count instances
  (stored, or refused with a failure status) and are summed apart under ``instances``; ``lost`` counts both.
- ``bad_inputs_tried``: malformed inputs the fuzz suite fed the reader.
- ``crashes``: tests that failed or errored, bad inputs that ended in an exception, and a pytest that died.

Usage::

    nice -n 10 .venv/bin/python bench/reliability.py            # about ten minutes on two cores

Writes bench/results/reliability.json and reliability.md; exits 1 when a requirement is not met (faults >= 7,
series_sent >= 50, bad_inputs_tried >= 100, lost 0, crashes 0).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SERVICE = "tests/test_modes_service.py::"
#: The fault and bad-input tests, by pytest node id (files: every test in them).
TESTS = [
    SERVICE + "test_worker_process_killed_mid_series_loses_nothing",
    SERVICE + "test_a_whole_worker_host_killed_mid_series_is_redelivered_within_the_visibility_timeout",
    SERVICE + "test_series_arriving_while_redis_is_down_are_processed_when_it_returns",
    SERVICE + "test_series_in_the_spool_of_a_killed_scp_are_processed_after_its_restart",
    SERVICE + "test_a_series_whose_message_a_broker_restart_lost_is_sent_again_by_the_next_worker",
    SERVICE + "test_celery_writeback_retries_while_orthanc_is_down",
    "tests/test_worker_embedded.py::test_orthanc_down_during_writeback_keeps_the_verdict_and_retries",
    "tests/test_scp.py::test_full_disk_answers_out_of_resources",
    "tests/test_spool.py::test_full_disk_raises_enospc_and_leaves_no_partial_file",
    "tests/test_fault_postgres.py",
    "tests/test_fault_load.py",
    "tests/test_fuzz_inputs.py",
]
REQUIRED = {"faults": 7, "series_sent": 50, "bad_inputs_tried": 100}


def run_tests(folder: Path) -> tuple[list[dict], dict, int, list[str]]:
    """Run the tests once; returns (the recorded rows, pytest's outcome per test, pytest's exit status, argv)."""
    log, junit = folder / "reliability.jsonl", folder / "junit.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *TESTS]
    env = {**os.environ, "DBP_RELIABILITY_LOG": str(log)}
    status = subprocess.run(argv, cwd=ROOT, env=env).returncode
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return rows, junit_outcomes(junit), status, argv


def junit_outcomes(path: Path) -> dict:
    """Each test's outcome (passed, failed, error, skipped) with the message of anything but a pass."""
    if not path.exists():
        return {}
    outcomes = {}
    for case in ElementTree.parse(path).iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome, message = {"failure": "failed"}.get(kind, kind), (found.get("message") or "")[:300]
                break
        outcomes[name] = {"outcome": outcome, "message": message, "seconds": round(float(case.get("time", 0)), 1)}
    return outcomes


def summarise(rows: list[dict], outcomes: dict, status: int) -> dict:
    """The totals the issue asks for, the per-fault rows, and whether the requirements are met."""
    faults = [r for r in rows if r["kind"] == "fault"]
    series = [r for r in faults if r["unit"] == "series"]
    instances = [r for r in faults if r["unit"] == "instances"]
    bad = [r for r in rows if r["kind"] == "bad_inputs"]
    failed = [name for name, o in outcomes.items() if o["outcome"] in ("failed", "error")]
    died = status not in (0, 1) or not outcomes  # killed by a signal, interrupted, or no report at all
    summary = {
        "faults": sorted({r["fault"] for r in faults}),
        "series_sent": sum(r["sent"] for r in series),
        "verdicts": sum(r["verdicts"] for r in series),
        "rejected": sum(r["rejected"] for r in series),
        "lost": sum(r["lost"] for r in faults),
        "bad_inputs_tried": sum(r["tried"] for r in bad),
        "crashes": len(failed) + sum(r["crashes"] for r in bad) + int(died),
        "instances": {"sent": sum(r["sent"] for r in instances), "stored": sum(r["verdicts"] for r in instances),
                      "refused": sum(r["rejected"] for r in instances)},
        "tests": {"run": len(outcomes), **{k: sum(o["outcome"] == k for o in outcomes.values())
                                           for k in ("passed", "failed", "error", "skipped")}},
        "failed_tests": failed,
        "skipped_tests": {name: o["message"] for name, o in outcomes.items() if o["outcome"] == "skipped"},
        "pytest_exit_status": status,
    }
    summary["requirements_met"] = (len(summary["faults"]) >= REQUIRED["faults"]
                                   and summary["series_sent"] >= REQUIRED["series_sent"]
                                   and summary["bad_inputs_tried"] >= REQUIRED["bad_inputs_tried"]
                                   and summary["lost"] == 0 and summary["crashes"] == 0)
    summary["per_fault"] = [{key: r[key] for key in ("fault", "unit", "sent", "verdicts", "rejected", "lost", "facts")}
                            | {"test": r["test"], "seconds": outcomes.get(r["test"], {}).get("seconds")}
                            for r in faults]
    summary["bad_input_suites"] = [{k: r[k] for k in ("suite", "tried", "crashes", "test")} for r in bad]
    return summary


def machine() -> dict:
    memory_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:")), 0)
    return {"cpus": os.cpu_count(), "memory_gib": round(memory_kib / 2**20, 1), "python": platform.python_version(),
            "platform": platform.platform()}


def markdown(results: dict) -> str:
    lines = [
        "# Reliability: faults survived, bad input refused, nothing lost",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']['cpus']} CPUs, {results['machine']['memory_gib']} GiB, Python "
        f"{results['machine']['python']}; load average {results['load_average_before']} before, "
        f"{results['load_average_after']} after (other work shared the machine)  ",
        f"Run: {results['date']}, {results['duration_s'] / 60:.1f} min; tests: {results['tests']['passed']} passed, "
        f"{results['tests']['failed']} failed, {results['tests']['error']} errors, {results['tests']['skipped']} skipped",
        "",
        "| faults | series sent | verdicts | stated rejections | lost | bad inputs tried | crashes |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {len(results['faults'])} | {results['series_sent']} | {results['verdicts']} | {results['rejected']} | "
        f"{results['lost']} | {results['bad_inputs_tried']} | {results['crashes']} |",
        "",
        f"Requirements (faults >= 7, series sent >= 50, bad inputs >= 100, lost 0, crashes 0): "
        f"**{'met' if results['requirements_met'] else 'NOT met'}**.",
        "",
        "| fault | unit | sent | verdicts (stored) | stated rejections (refused) | lost | test time | figures |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in results["per_fault"]:
        facts = ", ".join(f"{k} {v}" for k, v in row["facts"].items())
        seconds = f"{row['seconds']:.0f} s" if row["seconds"] is not None else ""
        lines.append(f"| {row['fault']} | {row['unit']} | {row['sent']} | {row['verdicts']} | {row['rejected']} | "
                     f"{row['lost']} | {seconds} | {facts} |")
    lines += ["", "| bad-input suite | inputs tried | crashes |", "| --- | ---: | ---: |"]
    lines += [f"| {r['suite']} | {r['tried']} | {r['crashes']} |" for r in results["bad_input_suites"]]
    instances = results["instances"]
    lines += [
        "",
        f"Instance-level faults (the DICOM node alone): {instances['sent']} instances sent, {instances['stored']} stored "
        f"and handed on, {instances['refused']} refused with a failure status.",
        "Lost: sent less verdicts and stated rejections (for instances: a success status with nothing on disk). "
        "Crashes: failed or errored tests, bad inputs that raised, a pytest that died.",
    ]
    if results["skipped_tests"]:
        lines += ["", "Skipped (their faults are not counted):"]
        lines += [f"- `{name}`: {message}" for name, message in results["skipped_tests"].items()]
    if results["failed_tests"]:
        lines += ["", "Failed:"] + [f"- `{name}`" for name in results["failed_tests"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    command = "nice -n 10 .venv/bin/python bench/reliability.py"
    load_before = [round(x, 1) for x in os.getloadavg()]
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dbp-reliability-") as folder:
        rows, outcomes, status, argv = run_tests(Path(folder))
    results = {
        **summarise(rows, outcomes, status),
        "command": command,
        "pytest_argv": [Path(argv[0]).name, *argv[1:4], "--junitxml=<temporary>", *argv[5:]],
        "machine": machine(),
        "duration_s": round(time.monotonic() - began, 1),
        "load_average_before": load_before,
        "load_average_after": [round(x, 1) for x in os.getloadavg()],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "reliability.md").write_text(markdown(results))
    print(markdown(results))
    return 0 if results["requirements_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
