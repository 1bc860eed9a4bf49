"""Scale on paper, from measured parts: bytes per series in the store, per canonical brain and per verification, on
SQLite and PostgreSQL; insert speed; then the arithmetic for 1M and 10M series.

The rows are copies of a measured archive's own rows (``--template``: a SQLite store the end-to-end benchmark kept
with ``bench_latency.py --keep-store``: real heads, real fingerprints, slices, brains and verification evidence),
each copy under a new SeriesInstanceUID, inserted through the store's own schema (``fingerprint.identity.store``,
indexes included). Sizes are measured at two row counts and the slope is taken, so fixed overhead does not count:
SQLite by file size after a checkpoint, PostgreSQL by ``pg_total_relation_size`` (table, TOAST and indexes) in a
scratch database created and dropped here. The arithmetic also reads the index memory from
``bench/results/index.json`` and the throughput from ``bench/results/latency.json`` (missing ones are said so).

Usage::

    .venv/bin/python bench/bench_latency.py --quick --keep-store /tmp/dbp-archive.sqlite
    nice -n 10 .venv/bin/python bench/bench_scale.py --template /tmp/dbp-archive.sqlite
    nice -n 10 .venv/bin/python bench/bench_scale.py --template ... --series 2000 10000 --postgres-url ""  # SQLite only

Writes bench/results/scale.json and scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, insert, text  # noqa: E402

from fingerprint.identity.store import Store, brains_table, series_table, verifications_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (1_000_000, 10_000_000)
DEFAULT_POSTGRES = os.environ.get("DBP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def template_rows(path: Path) -> dict[str, Any]:
    """The measured archive's fingerprinted series rows, brains and verifications (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row

    def rows(sql: str) -> list[dict[str, Any]]:
        return [dict(r) for r in conn.execute(sql)]

    series = rows("SELECT * FROM dbp_series WHERE vector IS NOT NULL")
    brains = rows("SELECT * FROM dbp_brains")
    verifications = rows("SELECT * FROM dbp_verifications")
    conn.close()
    if not series or not brains:
        raise SystemExit(f"{path}: no fingerprinted series or no canonical brains to copy")
    return {"series": series, "brains": brains, "verifications": verifications}


def _copies(rows: list[dict[str, Any]], start: int, count: int, table: Any) -> list[dict[str, Any]]:
    now = datetime.now(timezone.utc)
    columns = {c.name for c in table.columns}
    out = []
    for number in range(start, start + count):
        row = {k: v for k, v in rows[number % len(rows)].items() if k in columns and k != "id"}
        uid = f"2.25.{uuid.UUID(int=number + 1).int}"
        row["series_instance_uid"] = uid
        for key in ("created_at", "updated_at", "at"):
            if key in columns:
                row[key] = now
        if "seq" in columns:
            row["seq"] = number + 1
        if "candidate_series_instance_uid" in columns:
            row["candidate_series_instance_uid"] = f"2.25.{number + 7}"
        if "method_version" in columns and table is brains_table:
            row["method_version"] = row.get("method_version") or "v"
        out.append(row)
    return out


def fill(store: Store, table: Any, rows: list[dict[str, Any]], start: int, count: int) -> float:
    """Insert ``count`` copies in batches of 500; returns rows per second."""
    begin = time.perf_counter()
    for offset in range(start, start + count, 500):
        batch = _copies(rows, offset, min(500, start + count - offset), table)
        with store.engine.begin() as conn:
            conn.execute(insert(table), batch)
    return count / (time.perf_counter() - begin)


def sqlite_bytes(store: Store, path: Path) -> int:
    with store.engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def postgres_bytes(store: Store, table: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT pg_total_relation_size('{table.name}')")).scalar_one())


def measure(url: str, kind: str, template: dict[str, Any], counts: dict[str, tuple[int, int]],
            sqlite_path: Path | None) -> dict[str, Any]:
    """Bytes per row (slope between two counts) and insert rate, per table, on one fresh store."""
    store = Store(url)
    result: dict[str, Any] = {}
    try:
        for name, table in (("series", series_table), ("brains", brains_table),
                            ("verifications", verifications_table)):
            rows = template[name]
            if not rows:
                continue
            small, large = counts[name]
            fill(store, table, rows, 0, small)
            before = sqlite_bytes(store, sqlite_path) if sqlite_path else postgres_bytes(store, table)
            rate = fill(store, table, rows, small, large - small)
            after = sqlite_bytes(store, sqlite_path) if sqlite_path else postgres_bytes(store, table)
            result[name] = {"rows": [small, large], "bytes_per_row": round((after - before) / (large - small)),
                            "insert_rows_per_s": round(rate, 1)}
            print(f"{kind} {name}: {result[name]}", flush=True)
    finally:
        store.close()
    return result


def postgres_scratch(admin_url: str) -> tuple[str, Any]:
    """A fresh database of our own (dropped by the caller), so the shared one is never touched."""
    name = f"dbp_scale_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    return admin_url.rsplit("/", 1)[0] + f"/{name}", (admin, name)


def drop_scratch(handle: Any) -> None:
    admin, name = handle
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def headline_of(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    try:
        return json.loads(path.read_text()).get("headline") or {}
    except (OSError, ValueError):
        return {}


def index_bytes_per_fingerprint() -> dict[str, Any] | None:
    """Memory per fingerprint of the approximate index bench_index.py chose: its headline if it has one, else the
    largest measured ``bytes_per_fingerprint`` of the chosen factory in its sweep (None when neither is there)."""
    try:
        data = json.loads((RESULTS / "index.json").read_text())
    except (OSError, ValueError):
        return None
    for key, value in (data.get("headline") or {}).items():
        if "bytes_per_fingerprint" in key and isinstance(value, (int, float)):
            return {"bytes": value, "from": f"index.json headline {key}"}
    factory = (data.get("settings") or {}).get("auto_factory")
    sizes = [e.get("bytes_per_fingerprint") for e in data.get("sweep") or [] if e.get("factory") == factory]
    sizes = [b for b in sizes if isinstance(b, (int, float))]
    return {"bytes": max(sizes), "from": f"index.json sweep, {factory}"} if sizes else None


def arithmetic(stores: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    """Bytes and hours at 1M and 10M series from the measured parts (None where a part was not measured)."""
    verifications_per_series = len(template["verifications"]) / max(1, len(template["series"]))
    latency = headline_of("latency")
    index = headline_of("index")
    out: dict[str, Any] = {"verifications_per_series_in_template": round(verifications_per_series, 2),
                           "index_headline": index, "latency_headline": latency}
    for kind, parts in stores.items():
        per_series = parts.get("series", {}).get("bytes_per_row", 0)
        per_brain = parts.get("brains", {}).get("bytes_per_row", 0)
        per_verification = parts.get("verifications", {}).get("bytes_per_row", 0) * verifications_per_series
        out[kind] = {
            "bytes_per_series_total": round(per_series + per_brain + per_verification),
            **{f"{n // 1_000_000}M": {
                "series_rows_gb": round(per_series * n / 1e9, 1),
                "brains_gb": round(per_brain * n / 1e9, 1),
                "verifications_gb": round(per_verification * n / 1e9, 1),
                "total_gb": round((per_series + per_brain + per_verification) * n / 1e9, 1),
            } for n in SIZES},
        }
    approximate = index_bytes_per_fingerprint()
    if approximate:
        out["index_approximate"] = {"bytes_per_fingerprint": approximate["bytes"], "from": approximate["from"],
                                    **{f"{n // 1_000_000}M_gb": round(approximate["bytes"] * n / 1e9, 2)
                                       for n in SIZES}}
    flat = 512 * 4
    out["index_flat_float32_gb"] = {f"{n // 1_000_000}M": round(flat * n / 1e9, 2) for n in SIZES}
    out["index_flat_float16_gb"] = {f"{n // 1_000_000}M": round(flat / 2 * n / 1e9, 2) for n in SIZES}
    enroll = {}
    for workers, key in ((1, "series_per_min_1_worker"), (2, "series_per_min_2_workers")):
        rate = latency.get(key)
        if rate:
            enroll[f"{workers}_worker(s)_one_machine"] = {
                f"{n // 1_000_000}M_days": round(n / rate / 60 / 24, 1) for n in SIZES}
    out["enroll_days"] = enroll or "missing: bench/results/latency.json has no throughput headline"
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Scale: measured bytes per series, and the arithmetic for 1M and 10M series", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']['cpus']} CPUs, load average {result['load_average']}, {result['date']}. "
             f"Template: {result['template_rows']}.", "",
             "| store | table | rows (from, to) | bytes per row | insert rows/s |", "|---|---|---|---|---|"]
    for kind, parts in result["stores"].items():
        for name, part in parts.items():
            lines.append(f"| {kind} | {name} | {part['rows'][0]:,} -> {part['rows'][1]:,} | {part['bytes_per_row']:,} "
                         f"| {part['insert_rows_per_s']:,} |")
    lines += ["", "| store | size | series rows (GB) | canonical brains (GB) | verifications (GB) | total (GB) |",
              "|---|---|---|---|---|---|"]
    arithmetic_ = result["arithmetic"]
    for kind in result["stores"]:
        for size in ("1M", "10M"):
            e = arithmetic_[kind][size]
            lines.append(f"| {kind} | {size} | {e['series_rows_gb']} | {e['brains_gb']} | {e['verifications_gb']} | "
                         f"{e['total_gb']} |")
    lines += ["", f"Index, approximate: {arithmetic_.get('index_approximate', 'missing')}.  ",
              f"Index, flat float32: {arithmetic_['index_flat_float32_gb']} GB; float16: "
              f"{arithmetic_['index_flat_float16_gb']} GB (index.json headline: {arithmetic_['index_headline']}).",
              f"Enroll, days on one machine: {arithmetic_['enroll_days']}.",
              f"Verifications per series in the template archive: "
              f"{arithmetic_['verifications_per_series_in_template']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", type=Path, required=True, help="a measured archive's store.sqlite")
    parser.add_argument("--series", type=int, nargs=2, default=(2000, 10000), help="two row counts for the slope")
    parser.add_argument("--brains", type=int, nargs=2, default=(200, 1000))
    parser.add_argument("--verifications", type=int, nargs=2, default=(200, 1000))
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES, help="admin URL; empty: SQLite only")
    args = parser.parse_args()
    template = template_rows(args.template)
    counts = {"series": tuple(args.series), "brains": tuple(args.brains), "verifications": tuple(args.verifications)}
    stores: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dbp-bench-scale-") as tmp:
        path = Path(tmp) / "store.sqlite"
        stores["sqlite"] = measure(f"sqlite:///{path}", "sqlite", template, counts, path)
    if args.postgres_url:
        url, handle = postgres_scratch(args.postgres_url)
        try:
            stores["postgresql"] = measure(url, "postgresql", template, counts, None)
        finally:
            drop_scratch(handle)
    result = {
        "benchmark": "scale: bytes per series, and the arithmetic for 1M and 10M",
        "command": "nice -n 10 .venv/bin/python bench/bench_scale.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "template_rows": {k: len(v) for k, v in template.items()},
        "template_column_bytes": {
            "series": {c: round(sum(len(r[c]) for r in template["series"] if isinstance(r[c], (bytes, str)))
                                / len(template["series"])) for c in template["series"][0]
                       if isinstance(template["series"][0][c], (bytes, str))},
            "brain": round(sum(len(r["brain"]) for r in template["brains"]) / len(template["brains"])),
        },
        "stores": stores,
    }
    result["arithmetic"] = arithmetic(stores, template)
    result["headline"] = {f"{kind}_bytes_per_series": result["arithmetic"][kind]["bytes_per_series_total"]
                          for kind in stores}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (RESULTS / "scale.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
