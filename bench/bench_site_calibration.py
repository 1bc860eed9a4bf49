"""Calibration from the archive, proven on sites built from real heads: noisy labels in, site thresholds out.

A *site* is a real-head cohort (``deepbrainprint cohort generate --kind real-calibration``: the 26 real calibration
people, several simulated visits each on that site's scanners; a second site with other settings, e.g.
``--thick-2d-share 0.75 --seed 12``). Each site's archive is built as a hospital's would be: every visit enrolled in
date order through the archive (shipped model, verification on), with label errors planted: 2 % of visits filed
under another patient's PatientID (identity mismatches), 1 % under a second PatientID of their own (duplicates).

Then, per site:

1. ``calibrate_from_archive`` on the noisy labels (what ``deepbrainprint calibrate --from-archive`` runs);
2. the reference: the same pairs' scores with the true labels, plain (non-robust) bounds, i.e. the calibration a
   site with perfect labels would get; the distance between the two is reported;
3. every visit decided again against the whole archive with the site's thresholds (nothing recorded): the planted
   errors should come back as alarms, and the others should stay quiet (false alarms counted);
4. across sites: each site's thresholds applied to the other site's verified pairs (true labels), to show the
   thresholds move with the site and are right at their own.

Usage (after generating the cohorts; a site takes about 10 minutes on two cores)::

    nice -n 5 .venv/bin/python bench/bench_site_calibration.py --site a=cohorts/site-a --site b=cohorts/site-b

Writes bench/results/site_calibration.json and site_calibration.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fingerprint.evaluation.identity_data import cohort_views  # noqa: E402
from fingerprint.identity.archive import Archive, ArchiveConfig  # noqa: E402
from fingerprint.identity.calibration import Thresholds  # noqa: E402
from fingerprint.identity.score_bounds import score_thresholds  # noqa: E402
from fingerprint.identity.site_calibration import calibrate_from_archive  # noqa: E402
from fingerprint.identity.verdicts import ALARMS  # noqa: E402
from fingerprint.identity.verification import METHOD_VERSION  # noqa: E402
from fingerprint.model.fingerprinter import load_model  # noqa: E402
from fingerprint.types import FingerprintResult, SeriesIdentifiers, SliceResult  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MISFILED_SHARE = 0.02
SECOND_ID_SHARE = 0.01
SEED = 17


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", action="append", required=True, help="NAME=COHORT_DIR (two or more)")
    parser.add_argument("--far", type=float, default=0.001)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    model = load_model()
    sites = {}
    for entry in args.site:
        name, folder = entry.split("=", 1)
        started = time.perf_counter()
        sites[name] = run_site(name, Path(folder), model, args.far, args.workers)
        sites[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps({name: {k: v for k, v in sites[name].items() if k != "pairs"}}, default=str)[:2000])
    cross = cross_site(sites)
    report = {
        "what": __doc__.splitlines()[0],
        "far": args.far,
        "model_version": model.model_version,
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), {args.workers} workers",
        "sites": {name: {k: v for k, v in site.items() if k != "pairs"} for name, site in sites.items()},
        "cross_site": cross,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "site_calibration.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / "site_calibration.md").write_text(markdown(report))
    print(markdown(report))


def run_site(name: str, cohort: Path, model: Any, far: float, workers: int) -> dict[str, Any]:
    views = cohort_views(cohort, workers)
    dates = {row["scan_id"]: row["date"] for row in csv.DictReader(open(cohort / "cohort.csv", newline=""))}
    order = sorted(range(len(views.scans)), key=lambda k: (dates.get(views.scans[k].scan_id, ""), k))
    truth = [views.scans[k].person for k in order]
    labels, planted = plant_label_errors(truth)
    vectors = model.embed(views.slices[order])
    folder = Path(tempfile.mkdtemp(prefix=f"site-{name}-"))
    config = ArchiveConfig.at(folder, evidence_pictures=False)
    started = time.perf_counter()
    with Archive(config, model=model) as archive:
        results = []
        for position, k in enumerate(order):
            scan = views.scans[k]
            ids = SeriesIdentifiers(
                patient_id=labels[position],
                study_instance_uid=f"2.25.{position + 1}.1",
                series_instance_uid=f"2.25.{position + 1}",
                study_date=dates.get(scan.scan_id, "").replace("-", ""),
                modality="MR",
            )
            sliced = SliceResult(scan.slice.astype(np.float32), ids, brain=scan.brain)
            results.append(FingerprintResult(vectors[position], model.model_version, sliced))
            archive.decide_and_record(results[-1], {"folder": scan.scan_id})
        enrolled_s = time.perf_counter() - started
        site = calibrate_from_archive(archive.store, model.model_version, far, METHOD_VERSION, workers, name)
        pairs = scored_pairs(archive, [f"2.25.{p + 1}" for p in range(len(order))], truth)
        reference = clean_reference(vectors, truth, pairs, far, model.model_version)
        decisions = redecide(config, model, results, site)
    alarms = {str(p): decisions[p] for p in sorted(planted)}
    false_alarms = [p for p, verdict in enumerate(decisions) if p not in planted and verdict in ALARMS]
    return {
        "cohort": str(cohort),
        "scans": len(order),
        "people": len(set(truth)),
        "thick_2d_share": json.loads((cohort / "cohort.json").read_text()).get("thick_2d_share"),
        "planted": {str(p): kind for p, kind in sorted(planted.items())},
        "site_thresholds": {"fingerprint": brief(site.fingerprint), "verification": brief(site.verification)},
        "clean_label_thresholds": {"fingerprint": brief(reference[0]), "verification": brief(reference[1])},
        "distance_to_clean": {
            score: {
                "match": round(abs(a.match - b.match), 4),
                "mismatch": round(abs(a.mismatch - b.mismatch), 4),
            }
            for score, a, b in (("fingerprint", site.fingerprint, reference[0]),
                                ("verification", site.verification, reference[1]))
        },
        "label_errors_set_aside": {k: site.report.get(k) for k in
                                   ("same_label_pairs_set_aside", "different_label_pairs_set_aside")},
        "planted_verdicts": alarms,
        "planted_found": sum(1 for verdict in alarms.values() if verdict in ALARMS),
        "false_alarms": len(false_alarms),
        "false_alarm_scans": {views.scans[order[p]].scan_id: decisions[p] for p in false_alarms},
        "false_alarm_rate_per_series": round(len(false_alarms) / max(1, len(decisions) - len(planted)), 4),
        "verdicts": {v: decisions.count(v) for v in sorted(set(decisions))},
        "enroll_s": round(enrolled_s, 1),
        "pairs": pairs,
    }


def plant_label_errors(truth: list[str]) -> tuple[list[str], dict[int, str]]:
    """File MISFILED_SHARE of the visits under another person's PatientID and SECOND_ID_SHARE under a second one."""
    rng = np.random.default_rng(SEED)
    n = len(truth)
    misfiled = math.ceil(MISFILED_SHARE * n)
    second = math.ceil(SECOND_ID_SHARE * n)
    # Not a person's first visit: a misfiled study arrives later, into an archive that already knows both people.
    firsts = {truth.index(person) for person in set(truth)}
    chosen = rng.choice([p for p in range(n) if p not in firsts], misfiled + second, replace=False)
    labels = [f"PID-{person}" for person in truth]
    planted: dict[int, str] = {}
    people = sorted(set(truth))
    for p in chosen[:misfiled]:
        other = rng.choice([q for q in people if q != truth[p]])
        labels[int(p)] = f"PID-{other}"
        planted[int(p)] = "misfiled (identity_mismatch expected)"
    for p in chosen[misfiled:]:
        labels[int(p)] = f"PID-{truth[p]}-SECOND"
        planted[int(p)] = "second PatientID (possible_duplicate expected)"
    return labels, planted


def scored_pairs(archive: Archive, uids: list[str], truth: list[str]) -> list[tuple[bool, float]]:
    """Every pair of the archive that holds a verification score, with whether it is truly one person."""
    index = {uid: k for k, uid in enumerate(uids)}
    wanted = {(uids[i], uids[j]) for i in range(len(uids)) for j in range(i + 1, len(uids))}
    with archive.store.reading() as conn:
        found = archive.store.verification_scores(conn, wanted, METHOD_VERSION)
    return [(truth[index[a]] == truth[index[b]], score) for (a, b), score in found.items()]


def clean_reference(vectors: np.ndarray, truth: list[str], pairs: list[tuple[bool, float]], far: float,
                    model_version: str) -> tuple[Thresholds, Thresholds]:
    """The calibration a site with perfect labels would get from the same scores: true labels, plain bounds."""
    labels = np.asarray(truth)
    upper = np.triu_indices(len(truth), k=1)
    same = labels[upper[0]] == labels[upper[1]]
    cosine = (vectors @ vectors.T)[upper]
    fingerprint = score_thresholds(cosine[same], cosine[~same], far, model_version)
    v_same = np.asarray([s for is_same, s in pairs if is_same])
    v_different = np.asarray([s for is_same, s in pairs if not is_same])
    return fingerprint, score_thresholds(v_same, v_different, far, METHOD_VERSION)


def redecide(config: ArchiveConfig, model: Any, results: list[FingerprintResult], site: Any) -> list[str]:
    """Each visit decided again against the whole archive (itself left out) with the site's thresholds, kept in the
    store as ``calibrate --from-archive`` keeps them and read back from there."""
    with Archive(config, model=model) as archive:
        for thresholds in (site.fingerprint, site.verification):
            archive.store.save_thresholds(thresholds.model_version, thresholds.as_json())
    with Archive(config, model=model) as archive:
        assert archive.thresholds(model.model_version).details.get("from") == "store"
        return [archive.decide_and_record(result, {}, record=False)["verdict"] for result in results]


def cross_site(sites: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each site's verification thresholds on every site's verified pairs (true labels): errors per pair."""
    table = {}
    for own, site in sites.items():
        t = site["site_thresholds"]["verification"]
        for other, target in sites.items():
            same = np.asarray([s for is_same, s in target["pairs"] if is_same])
            different = np.asarray([s for is_same, s in target["pairs"] if not is_same])
            table[f"{own} thresholds on {other}"] = {
                "same_person_below_mismatch": round(float(np.mean(same < t["mismatch"])), 4),
                "same_person_not_confirmed": round(float(np.mean(same < t["match"])), 4),
                "different_people_at_or_above_match": round(float(np.mean(different >= t["match"])), 4),
                "same_pairs": int(len(same)),
                "different_pairs": int(len(different)),
            }
    return table


def brief(t: Thresholds | None) -> dict[str, Any] | None:
    if t is None:
        return None
    d = t.details
    return {"match": round(t.match, 4), "mismatch": round(t.mismatch, 4), "same_pairs": d.get("same_pairs"),
            "different_pairs": d.get("different_pairs")}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Calibration from the archive, on sites built from real heads",
        "",
        f"{report['what'].rstrip('.')}. False-alarm rate {report['far']:g}; model `{report['model_version']}`; "
        f"{report['machine']}. Made by `bench/bench_site_calibration.py`.",
        "",
        "| site | scans (people) | thick 2D share | planted errors found | false alarms (per series) | "
        "verification match / mismatch: archive vs clean labels | fingerprint match / mismatch: archive vs clean |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in report["sites"].items():
        v, vc = s["site_thresholds"]["verification"], s["clean_label_thresholds"]["verification"]
        f, fc = s["site_thresholds"]["fingerprint"], s["clean_label_thresholds"]["fingerprint"]
        lines.append(
            f"| {name} | {s['scans']} ({s['people']}) | {s['thick_2d_share']} | {s['planted_found']} of "
            f"{len(s['planted'])} | {s['false_alarms']} ({s['false_alarm_rate_per_series']:.2%}) | "
            f"{v['match']:.3f} / {v['mismatch']:.3f} vs {vc['match']:.3f} / {vc['mismatch']:.3f} | "
            f"{f['match']:.4f} / {f['mismatch']:.4f} vs {fc['match']:.4f} / {fc['mismatch']:.4f} |"
        )
    lines += ["", "Each site's verification thresholds on each site's verified pairs (true labels):", "",
              "| thresholds on pairs | same person below mismatch | same person not confirmed | different people at "
              "or above match |", "|---|---|---|---|"]
    for key, row in report["cross_site"].items():
        lines.append(f"| {key} | {row['same_person_below_mismatch']:.2%} | {row['same_person_not_confirmed']:.2%} | "
                     f"{row['different_people_at_or_above_match']:.2%} |")
    lines += ["", "False alarms (correctly filed visits that raised an alarm at the site's thresholds):", ""]
    for name, s in report["sites"].items():
        for scan, verdict in s["false_alarm_scans"].items():
            lines.append(f"- {name}: `{scan}` -> `{verdict}`")
    lines += ["", "Planted errors and their verdicts at the site's thresholds:", ""]
    for name, s in report["sites"].items():
        for position, kind in s["planted"].items():
            lines.append(f"- {name}, visit {position}: {kind} -> `{s['planted_verdicts'][position]}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
