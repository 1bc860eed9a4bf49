"""Real heads before and after the alignment speed-up: does the faster alignment separate real people as well?

Every real volume of the shared data (the five series of ``t1/``, the four positions of ``repeats/``, the 33 whole
heads of ``people/``) goes through the canonical views (alignment, slice, canonical brain) twice in one run: with the
alignment settings before issue 16 (``bench_slice.PREVIOUS_SETTINGS``) and with the shipped ones. For each setting
the same pairs are scored three ways: raw pixels (cosine of the two canonical slices: the baseline), the shipped
model's fingerprints (cosine) and the 3D verification (every same-person pair, a fixed sample of different-person
pairs and every pair of held-out people), on all volumes and on the people held out of training and calibration
(``HELD_OUT``). Nothing here is fitted or tuned: the thresholds are the shipped ones.

Same person (known from the data, see ``../shared/data/README.md`` and README *Real people*): the Trio series and the
four decubitus positions twelve years later (one man), and Subj9/Subj10, Subj15/Subj16, Subj19/Subj20 of the
older adults (one participant each). Every other pair is two different people.

Usage::

    nice -n 10 .venv/bin/python bench/bench_real_alignment.py [--different-verified 60] [--data ../shared/data]
    nice -n 10 .venv/bin/python bench/bench_real_alignment.py --candidate REFINE_SAMPLING_FRACTION=0.15

Writes bench/results/real_alignment.json and .md (with ``--candidate``: real_alignment_candidate.json and .md, the
shipped settings against the candidate; nothing is shipped by it).
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


#: Volumes of people held out of training and of calibration (``fingerprint.cohort.heads.REAL_TEST_HEADS``; Colin27
#: is not in the shared data): the Trio man and his repeats, older adults 1-8 and IXI 012-014.
HELD_OUT = frozenset({
    *SAME_PERSON["trio-man"],
    *(f"people/older-adults-2mm/Subj{k}_T1.nii.gz" for k in range(1, 9)),
    *(f"people/ixi-2mm/{stem}-T1_ds.nii.gz" for stem in ("IXI012-HH-1211", "IXI013-HH-1212", "IXI014-HH-1236")),
})


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


def pair_scores(seen: dict[str, dict[str, Any]], model: Any, verified_pairs: list[tuple[str, str]]) -> dict:
    """(a, b) -> {raw, fingerprint, verification} for every pair of accepted volumes (verification only for
    ``verified_pairs``; None where it could not score)."""
    usable = sorted(n for n, v in seen.items() if "pixels" in v)  # pairs (a, b) with a < b, as ``verified_pairs``
    vectors = dict(zip(usable, model.embed(np.stack([seen[n]["pixels"] for n in usable]))))
    flat = {n: seen[n]["pixels"].ravel() / max(float(np.linalg.norm(seen[n]["pixels"])), 1e-12) for n in usable}
    scores = {
        (a, b): {"raw": float(flat[a] @ flat[b]), "fingerprint": float(vectors[a] @ vectors[b])}
        for a, b in itertools.combinations(usable, 2)
    }
    prepared = {n: prepare(seen[n]["brain"]) for n in usable}
    for a, b in verified_pairs:
        if (a, b) in scores:
            scores[(a, b)]["verification"] = verify(prepared[a], prepared[b]).score
    return scores


def summarise(scores: dict, keep: Any, fp: Any, vt: Any) -> dict[str, Any]:
    """Raw-pixel, fingerprint and verification figures over the pairs ``keep(a, b)`` admits, by same/different."""
    metrics = ("raw", "fingerprint", "verification")
    by: dict[str, dict[str, list[float]]] = {m: {"same": [], "different": []} for m in metrics}
    unscored = 0
    for (a, b), pair in scores.items():
        if not keep(a, b):
            continue
        kind = "same" if person_of(a) == person_of(b) else "different"
        by["raw"][kind].append(pair["raw"])
        by["fingerprint"][kind].append(pair["fingerprint"])
        if "verification" in pair:
            if pair["verification"] is None:
                unscored += 1
            else:
                by["verification"][kind].append(float(pair["verification"]))
    fingerprint, verification = by["fingerprint"], by["verification"]
    return {
        "raw_pixels": {k: summary(v) for k, v in by["raw"].items()},
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


def score_setting(
    seen: dict[str, dict[str, Any]], model: Any, verified_pairs: list[tuple[str, str]], fp: Any, vt: Any
) -> dict[str, Any]:
    """One setting's figures on all volumes and on the held-out ones only (both volumes of a pair held out)."""
    scores = pair_scores(seen, model, verified_pairs)
    return {
        "rejected": {n: v["rejected"] for n, v in seen.items() if "rejected" in v},
        "align_cpu_s_median": round(statistics.median(v["cpu_s"] for v in seen.values() if "cpu_s" in v), 3),
        "all": summarise(scores, lambda a, b: True, fp, vt),
        "held_out": summarise(scores, lambda a, b: a in HELD_OUT and b in HELD_OUT, fp, vt),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--different-verified", type=int, default=60, help="different-person pairs verified")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--candidate", nargs="+", default=[], metavar="NAME=VALUE",
                        help="compare the shipped settings with these canonical constants changed (e.g. "
                             "REFINE_SAMPLING_FRACTION=0.15) instead of the settings before issue 16; writes "
                             "real_alignment_candidate.json and .md")
    args = parser.parse_args()
    settings = SETTINGS
    if args.candidate:
        settings = {"shipped": {}, "candidate": candidate_settings(args.candidate)}
    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    volumes = real_volumes(args.data)
    names = sorted(volumes)
    pairs = list(itertools.combinations(names, 2))
    same = [p for p in pairs if person_of(p[0]) == person_of(p[1])]
    different = random.Random(args.seed).sample([p for p in pairs if p not in same], args.different_verified)
    held_out_pairs = [p for p in pairs if p[0] in HELD_OUT and p[1] in HELD_OUT and p not in same]
    different = [*different, *(p for p in held_out_pairs if p not in different)]
    model = load_model()
    fp = resolve_thresholds(model.model_version)
    vt = resolve_thresholds(METHOD_VERSION)
    results = {name: score_setting(views(volumes, values), model, same + different, fp, vt)
               for name, values in settings.items()}
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
    if args.candidate:
        report["benchmark"] = "real heads, shipped alignment settings against a candidate"
        report["candidate"] = settings["candidate"]
    name = "real_alignment_candidate" if args.candidate else "real_alignment"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


def candidate_settings(assignments: list[str]) -> dict[str, Any]:
    """``["REFINE_SAMPLING_FRACTION=0.15"]`` -> ``{"REFINE_SAMPLING_FRACTION": 0.15}``: canonical's constants, each
    value read as a Python literal and required to name an existing constant (a typo must not pass as "no change")."""
    import ast

    from fingerprint.imaging import canonical

    values: dict[str, Any] = {}
    for assignment in assignments:
        name, _, text = assignment.partition("=")
        if not hasattr(canonical, name):
            raise SystemExit(f"--candidate: fingerprint.imaging.canonical has no constant {name!r}")
        values[name] = ast.literal_eval(text)
    return values


def markdown(report: dict[str, Any]) -> str:
    rows = []
    for subset, label in (("all", "all 42 volumes"), ("held_out", "held out of training and calibration")):
        for name, r in report["settings"].items():
            figures = r[subset]
            v, f, raw = figures["verification"], figures["fingerprint"], figures["raw_pixels"]
            rows.append(
                f"| {label} | {name} | {r['align_cpu_s_median']} | {len(r['rejected'])} | "
                f"{v['same'].get('n', 0)} / {v['different'].get('n', 0)} | "
                f"{raw['same'].get('min')} / {raw['different'].get('max')} | "
                f"{f['same'].get('min')} / {f['same'].get('median')} / {f['different'].get('max')} | "
                f"{figures['fingerprint_same_below_match']} / {figures['fingerprint_different_at_or_above_match']} | "
                f"{v['same'].get('min')} / {v['same'].get('median')} / {v['different'].get('max')} | "
                f"{figures['verification_same_below_match']} / {figures['verification_same_below_mismatch']} / "
                f"{figures['verification_different_at_or_above_match']} |"
            )
    fp, vt = report["thresholds"]["fingerprint"], report["thresholds"]["verification"]
    return "\n".join([
        "# Real heads: alignment settings before and after issue 16, same run" if "candidate" not in report else
        f"# Real heads: shipped alignment settings against the candidate {report['candidate']}, same run",
        "",
        f"Command: `{report['command']}`  ",
        f"{report['volumes']} real volumes of {report['people']} people ({report['same_person_pairs']} same-person "
        f"pairs, all verified; {report['different_person_pairs_verified']} different-person pairs verified: a fixed "
        "sample plus every held-out pair; every pair scored by raw pixels and fingerprint); model "
        f"`{report['model_version']}`; {report['date']}, {report['seconds']} s, load average "
        f"{report['load_average']['start']} at start.",
        "",
        "Held out of training and calibration (`REAL_TEST_HEADS`): the Trio man (`t1/siemens-trio-3t-sag` and his "
        "four `repeats/` twelve years later), older adults Subj1-8 and IXI012, IXI013, IXI014.",
        "",
        f"Shipped thresholds: fingerprint match {fp[0]:.4f} / mismatch {fp[1]:.4f}; verification match {vt[0]:.4f} / "
        f"mismatch {vt[1]:.4f}. Nothing is tuned here. False alarms among different people are the pairs at or above "
        "a match threshold.",
        "",
        "| volumes | settings | align CPU s (median) | rejected | verified pairs same / different | raw pixels: same "
        "min / different max | fingerprint: same min / median / different max | fingerprint: same below match / "
        "different at or above | verification: same min / median / different max | verification: same below match "
        "/ below mismatch / different at or above match |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])


if __name__ == "__main__":
    main()
