"""Install benchmark: how big the CPU-only install is, and how long each command takes to start.

Figures:
- the virtual environment's size on disk (``du``), in all and for its largest packages;
- for each ``deepbrainprint`` subcommand, the wall time of ``deepbrainprint <cmd> --help`` (median of
  ``--repetitions`` runs, each a fresh process) and which heavy libraries (torch, FAISS, SimpleITK, pydicom,
  pynetdicom, SQLAlchemy, numpy, Celery...) that process imported;
- the same for commands that do run without heavy libraries (``version``, ``down`` with nothing running,
  ``report audit`` on an empty archive), and ``python -X importtime`` of the heavy libraries themselves (what a
  command pays when it does need them).

Usage::

    nice -n 10 .venv/bin/python bench/bench_install.py
    nice -n 10 .venv/bin/python bench/bench_install.py --repetitions 1   # quicker

Writes bench/results/install.json and install.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HEAVY = ("torch", "faiss", "SimpleITK", "scipy", "pydicom", "pynetdicom", "sqlalchemy", "numpy", "celery", "redis",
         "requests", "orthanc_api_client", "PIL", "matplotlib", "onnxruntime")

#: Runs the CLI in-process, then reports which heavy modules got imported (stderr, last line).
PROBE = f"""
import sys
sys.argv = ["deepbrainprint", *sys.argv[1:]]
from deepbrainprint.cli.app import main
try:
    main()
except SystemExit:
    pass
print("HEAVY=" + ",".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
"""


def subcommands() -> list[str]:
    """Every registered command, sub-apps' commands as ``group cmd``."""
    sys.path.insert(0, str(ROOT))
    from typer.main import get_command

    from deepbrainprint.cli.app import app

    root = get_command(app)
    names = []
    for name, command in sorted(root.commands.items()):  # type: ignore[attr-defined]
        names.append(name)
        for sub in sorted(getattr(command, "commands", {}) or {}):
            names.append(f"{name} {sub}")
    return names


def timed_run(argv: list[str], env: dict[str, str], repetitions: int) -> dict:
    """Median wall time of the probe running ``deepbrainprint <argv>``, and the heavy modules it imported."""
    times, heavy = [], ""
    for _ in range(repetitions):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=300)
        times.append(time.perf_counter() - start)
        lines = [line for line in done.stderr.splitlines() if line.startswith("HEAVY=")]
        heavy = lines[-1][len("HEAVY="):] if lines else "?"
    return {"seconds_median": round(statistics.median(times), 3), "heavy_imported": [h for h in heavy.split(",") if h]}


def import_time(module: str, env: dict[str, str], repetitions: int) -> float:
    """Median seconds for ``import module`` in a fresh interpreter (cumulative, as -X importtime counts it)."""
    values = []
    for _ in range(repetitions):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=300)
        rows = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
        top = [r for r in rows if r.rstrip().endswith(f"| {module}")]
        if top:
            values.append(int(top[-1].split("|")[1]) / 1e6)
    return round(statistics.median(values), 3) if values else float("nan")


def du_bytes(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def venv_sizes(venv: Path) -> dict:
    site = next(venv.glob("lib/python*/site-packages"))
    packages = sorted(((du_bytes(p), p.name) for p in site.iterdir() if p.is_dir() and not p.name.endswith("-info")),
                      reverse=True)
    return {"venv_bytes": du_bytes(venv), "site_packages_bytes": du_bytes(site),
            "largest": [{"package": name, "bytes": size} for size, name in packages[:12]]}


def run(repetitions: int) -> dict:
    venv = Path(sys.prefix)
    with tempfile.TemporaryDirectory(prefix="dbp-bench-install-") as home:
        env = {**os.environ, "DBP_HOME": home, "PYTHONWARNINGS": "ignore"}
        commands = {"(none)": timed_run(["--help"], env, repetitions)}
        for name in subcommands():
            commands[name] = timed_run([*name.split(), "--help"], env, repetitions)
        runs = {" ".join(argv): timed_run(argv, env, repetitions) for argv in (["version"], ["down"],
                                                                                ["report", "audit"])}
        imports = {module: import_time(module, env, repetitions) for module in
                   ("typer", "numpy", "sqlalchemy", "pydicom", "pynetdicom", "SimpleITK", "faiss", "torch")}
    return {
        "benchmark": "install size and command start-up",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "repetitions": repetitions,
        "size": venv_sizes(venv),
        "help_per_command": commands,
        "runs_without_heavy_work": runs,
        "import_seconds": imports,
        "headline": {
            "venv_mb": round(du_bytes(venv) / 1e6, 1),
            "help_s_p50": commands["(none)"]["seconds_median"],
            "help_max_s": max(c["seconds_median"] for c in commands.values()),
        },
    }


def markdown(result: dict) -> str:
    size = result["size"]
    lines = [
        "# Install: size of the CPU-only environment and start-up time of each command",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpus']} CPUs, Python {result['machine']['python']}, load average "
        f"{result['load_average']}, {result['date']}; medians of {result['repetitions']} fresh processes each.",
        "",
        f"Virtual environment: **{size['venv_bytes'] / 1e6:.0f} MB** (site-packages {size['site_packages_bytes'] / 1e6:.0f} MB). "
        "Largest packages: " + ", ".join(f"{p['package']} {p['bytes'] / 1e6:.0f} MB" for p in size["largest"]) + ".",
        "",
        "| command | seconds | heavy libraries imported |",
        "|---|---|---|",
    ]
    for name, entry in result["help_per_command"].items():
        label = "deepbrainprint --help" if name == "(none)" else f"deepbrainprint {name} --help"
        lines.append(f"| `{label}` | {entry['seconds_median']} | {', '.join(entry['heavy_imported']) or 'none'} |")
    for name, entry in result["runs_without_heavy_work"].items():
        lines.append(f"| `deepbrainprint {name}` (runs) | {entry['seconds_median']} | "
                     f"{', '.join(entry['heavy_imported']) or 'none'} |")
    lines += ["", "| library | import time (s) |", "|---|---|"]
    lines += [f"| {module} | {seconds} |" for module, seconds in result["import_seconds"].items()]
    lines += ["", "Times are wall time of a fresh interpreter running the command in-process (start-up included). "
              "Commands import torch, FAISS, SimpleITK or pydicom only inside the code that needs them.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    result = run(args.repetitions)
    result["command"] = "nice -n 10 .venv/bin/python bench/bench_install.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "install.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "install.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
