"""Real heads before and after the alignment speed-up: does the faster alignment separate real people as well?

Every real volume of the shared data (the five series of ``t1/``, the four positions of ``repeats/``, the 33 whole
heads of ``people/``) goes through the canonical views (alignment, slice, canonical brain) twice in one run: with the
alignment settings before issue 16 (``bench_slice.PREVIOUS_SETTINGS``) and with the shipped ones. For each setting
the same pairs are scored three ways: raw pixels (cosine of the two canonical slices: the baseline), the shipped
model's fingerprints (cosine) and the 3D verification (every same-person pair and a fixed sample of
different-person pairs). Nothing here is fitted or tuned: the thresholds are the shipped ones.

Same person (known from the data, see ``../shared/data/README.md`` and README *Real people*): the Trio series and the
four decubitus positions twelve years later (one man), and Subj9/Subj10, Subj15/Subj16, Subj19/Subj20 of the
older adults (one participant each). Every other pair is two different people.

Usage::

    nice -n 10 .venv/bin/python bench/bench_real_alignment.py [--different-verified 60] [--data ../shared/data]

Writes bench/results/real_alignment.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_slice import PREVIOUS_SETTINGS, alignment_settings  # noqa: E402

from fingerprint.errors import SeriesRejected  # noqa: E402
from fingerprint.identity.calibration import resolve_thresholds  # noqa: E402
from fingerprint.identity.verification import METHOD_VERSION, prepare, verify  # noqa: E402
from fingerprint.imaging.dicom_read import read_series  # noqa: E402
from fingerprint.imaging.pipeline import canonical_views  # noqa: E402
from fingerprint.model.fingerprinter import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"previous": PREVIOUS_SETTINGS, "shipped": {}}
#: Volumes that are one person (everything else is a different person each).
SAME_PERSON = {
    "trio-man": ("t1/siemens-trio-3t-sag", "repeats/decubitus-HFDL-t1-2d", "repeats/decubitus-HFDR-t1-2d",
                 "repeats/decubitus-HFP-t1-2d", "repeats/decubitus-HFS-t1-2d"),
    "subj9": ("people/older-adults-2mm/Subj9_T1.nii.gz", "people/older-adults-2mm/Subj10_T1.nii.gz"),
    "subj15": ("people/older-adults-2mm/Subj15_T1.nii.gz", "people/older-adults-2mm/Subj16_T1.nii.gz"),
    "subj19": ("people/older-adults-2mm/Subj19_T1.nii.gz", "people/older-adults-2mm/Subj20_T1.nii.gz"),
}


def real_volumes(data: Path) -> dict[str, sitk.Image]:
    """name -> volume: the DICOM series of t1/ and repeats/, and the NIfTI heads of people/."""
    volumes: dict[str, sitk.Image] = {}
    for group in ("t1", "repeats"):
        for folder in sorted(p for p in (data / group).iterdir() if p.is_dir()):
            volumes[f"{group}/{folder.name}"] = read_series(folder).image
    for path in sorted((data / "people").glob("*/*.nii.gz")):
        volumes[str(path.relative_to(data))] = sitk.ReadImage(str(path), sitk.sitkFloat32)
    return volumes


def person_of(name: str) -> str:
    for person, members in SAME_PERSON.items():
        if name in members:
            return person
    return name


def views(volumes: dict[str, sitk.Image], values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> {pixels, brain, cpu_s} or {rejected} for one alignment setting."""
    out: dict[str, dict[str, Any]] = {}
    with alignment_settings(values):
        for name, image in volumes.items():
            cpu = time.process_time()
            try:
                pixels, _geometry, brain = canonical_views(image, with_brain=True)
            except SeriesRejected as rejection:
                out[name] = {"rejected": rejection.reason.value}
                continue
            out[name] = {"pixels": pixels, "brain": brain, "cpu_s": time.process_time() - cpu}
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "min": round(min(values), 4), "median": round(statistics.median(values), 4),
            "max": round(max(values), 4)} if values else {"n": 0}


def score_setting(
    seen: dict[str, dict[str, Any]], model: Any, verified_pairs: list[tuple[str, str]], fp: Any, vt: Any
) -> dict[str, Any]:
    """Raw-pixel, fingerprint and verification scores of one setting's views, split by same/different person."""
    usable = [n for n, v in seen.items() if "pixels" in v]
    vectors = dict(zip(usable, model.embed(np.stack([seen[n]["pixels"] for n in usable]))))
    flat = {n: seen[n]["pixels"].ravel() / max(float(np.linalg.norm(seen[n]["pixels"])), 1e-12) for n in usable}
    raw: dict[str, list[float]] = {"same": [], "different": []}
    fingerprint: dict[str, list[float]] = {"same": [], "different": []}
    for a, b in itertools.combinations(usable, 2):
        kind = "same" if person_of(a) == person_of(b) else "different"
        raw[kind].append(float(flat[a] @ flat[b]))
        fingerprint[kind].append(float(vectors[a] @ vectors[b]))
    prepared = {n: prepare(seen[n]["brain"]) for n in usable}
    verification: dict[str, list[float]] = {"same": [], "different": []}
    unscored = 0
    for a, b in verified_pairs:
        if a not in prepared or b not in prepared:
            continue
        score = verify(prepared[a], prepared[b]).score
        if score is None:
            unscored += 1
            continue
        verification["same" if person_of(a) == person_of(b) else "different"].append(float(score))
    return {
        "rejected": {n: v["rejected"] for n, v in seen.items() if "rejected" in v},
        "align_cpu_s_median": round(statistics.median(seen[n]["cpu_s"] for n in usable), 3),
        "raw_pixels": {k: summary(v) for k, v in raw.items()},
        "fingerprint": {k: summary(v) for k, v in fingerprint.items()},
        "fingerprint_same_below_match": sum(s < fp.match for s in fingerprint["same"]),
        "fingerprint_different_at_or_above_match": sum(s >= fp.match for s in fingerprint["different"]),
        "verification": {k: summary(v) for k, v in verification.items()},
        "verification_unscored": unscored,
        "verification_same_below_mismatch": sum(s < vt.mismatch for s in verification["same"]),
        "verification_same_below_match": sum(s < vt.match for s in verification["same"]),
        "verification_different_at_or_above_match": sum(s >= vt.match for s in verification["different"]),
        "verification_gap": (round(min(verification["same"]) - max(verification["different"]), 4)
                             if verification["same"] and verification["different"] else None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--different-verified", type=int, default=60, help="different-person pairs verified")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    volumes = real_volumes(args.data)
    names = sorted(volumes)
    pairs = list(itertools.combinations(names, 2))
    same = [p for p in pairs if person_of(p[0]) == person_of(p[1])]
    different = random.Random(args.seed).sample([p for p in pairs if p not in same], args.different_verified)
    model = load_model()
    fp = resolve_thresholds(model.model_version)
    vt = resolve_thresholds(METHOD_VERSION)
    results = {name: score_setting(views(volumes, values), model, same + different, fp, vt)
               for name, values in SETTINGS.items()}
    report = {
        "benchmark": "real heads, alignment before and after issue 16",
        "command": "nice -n 10 .venv/bin/python bench/bench_real_alignment.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "seconds": round(time.perf_counter() - started, 1),
        "volumes": len(names),
        "people": len({person_of(n) for n in names}),
        "same_person_pairs": len(same),
        "different_person_pairs_verified": len(different),
        "model_version": model.model_version,
        "thresholds": {"fingerprint": [fp.match, fp.mismatch], "verification": [vt.match, vt.mismatch]},
        "settings": results,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "real_alignment.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "real_alignment.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    rows = []
    for name, r in report["settings"].items():
        v, f, raw = r["verification"], r["fingerprint"], r["raw_pixels"]
        rows.append(
            f"| {name} | {r['align_cpu_s_median']} | {len(r['rejected'])} | "
            f"{raw['same'].get('min')} / {raw['different'].get('max')} | "
            f"{f['same'].get('min')} / {f['same'].get('median')} / {f['different'].get('max')} | "
            f"{r['fingerprint_same_below_match']} / {r['fingerprint_different_at_or_above_match']} | "
            f"{v['same'].get('min')} / {v['same'].get('median')} / {v['different'].get('max')} | "
            f"{r['verification_same_below_match']} / {r['verification_same_below_mismatch']} / "
            f"{r['verification_different_at_or_above_match']} |"
        )
    fp, vt = report["thresholds"]["fingerprint"], report["thresholds"]["verification"]
    return "\n".join([
        "# Real heads: alignment settings before and after issue 16, same run",
        "",
        f"Command: `{report['command']}`  ",
        f"{report['volumes']} real volumes of {report['people']} people ({report['same_person_pairs']} same-person "
        f"pairs, all scored; {report['different_person_pairs_verified']} different-person pairs verified, every "
        f"different pair scored by raw pixels and fingerprint); model `{report['model_version']}`; "
        f"{report['date']}, {report['seconds']} s, load average {report['load_average']['start']} at start.",
        "",
        f"Shipped thresholds: fingerprint match {fp[0]} / mismatch {fp[1]}; verification match {vt[0]} / mismatch "
        f"{vt[1]}. Nothing is tuned here.",
        "",
        "| settings | align CPU s (median) | rejected | raw pixels: same min / different max | fingerprint: same "
        "min / median / different max | fingerprint: same below match / different at or above | verification: "
        "same min / median / different max | verification: same below match / below mismatch / different at or "
        "above match |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])


if __name__ == "__main__":
    main()
