"""Issue 13, part 3: does a richer input (three axial levels as channels) make a fingerprint that beats its own pixels
on held-out real heads? A bounded, like-for-like CPU experiment; nothing here changes the shipped model.

What it does, in order (every stage is cached under ``--out``, so a re-run redoes only what is missing):

1. **Training data** from the 26 real people of ``REAL_CALIBRATION_HEADS`` only (never ``REAL_TEST_HEADS``): the
   fast-path generator (``fingerprint.cohort.training_set``) writes each subject-visit as a stack of the axial levels
   ``LEVEL_OFFSETS_MM`` around the canonical plane; the single-slice cohort is the stack's canonical channel, which
   is the shipped generator's slice bit for bit (tests/test_cohort.py), so both variants train on the same
   subject-visits.
2. **Two encoders, the same wall budget** (``--minutes`` each, one torch thread), the project's training loop and loss
   (``fingerprint.model.training.loop.train``): single slice (1 channel, from the shipped v2 weights) and three levels
   (3 channels, from v2 with its first convolution divided over the channels: at step 0 it is v2 on a stack of three
   identical slices, ``fingerprint.model.encoder.spread_input_channels``).
3. **Held-out real heads**, through the real pipeline (alignment of the volume, then the levels:
   ``fingerprint.imaging.pipeline.canonical_levels``). The decision set, ``held-out``: the real-test cohort (3
   simulated visits of each of the 13 people of ``REAL_TEST_HEADS``; generated here if ``--real-test`` is absent),
   those people's own volumes, and the real series of the held-out man of the shared data (the Siemens Trio series
   and his four decubitus repeats). A second set is the model card's real-head benchmark (the real-test cohort and
   the nine real series of the shared data, four of them people whose warps are training subjects: one scan each,
   they only add different-person pairs), for comparison with the figures there.
4. **Figures**: recall@1, mAP@3, ROC AUC, TPR at 0.1 % FPR (``identity_benchmark.retrieval_and_pairs``) for raw
   pixels of the canonical slice, raw pixels of the level stack, shipped v2, v2 spread over the levels (the 3-level
   model at step 0), the single-slice retrain and the 3-level model (each as the loop's model selection kept it, and
   as its last step left it). A model *beats* a baseline when it is at least as good on all four figures and better
   on one; the issue's rule: a model that does not beat the raw pixels of its own input is not shipped. The spread
   of each difference to the raw pixels over random subsets of the people says how far one figure can be trusted.

Usage (the run behind bench/results/richer_input.*; ``--minutes 1 --subjects 52`` is a smoke run)::

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python bench/experiment_richer_input.py --minutes 15

Writes bench/results/richer_input.json and .md (``--results`` elsewhere for a smoke run).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fingerprint.cohort.heads import REAL_CALIBRATION_HEADS, REAL_TEST_HEADS, SHARED_DATA, person_of, source_path  # noqa: E402
from fingerprint.imaging.slicing import LEVEL_OFFSETS_MM  # noqa: E402
from fingerprint.locations import SHIPPED_WEIGHTS_DIR  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CANONICAL = LEVEL_OFFSETS_MM.index(0.0)
TRAIN_SEED = 0  # the seed `deepbrainprint cohort generate --kind train` uses by default
REAL_TEST_SEED = 3  # the default seed of --kind real-test
FIGURES = ("recall@1", "mAP@3", "roc_auc", "tpr@fpr0.001")


def _threads(count: int = 1) -> None:
    """One thread for torch and SimpleITK: the machine's other core is someone else's."""
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(count)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)


# --- 1. training data ---------------------------------------------------------------------------------------------
def training_cohorts(out: Path, subjects: int, visits: int, workers: int) -> tuple[Path, Path, dict[str, Any]]:
    """(single-slice cohort, level cohort, how they were made): one generation, the single slice its canonical channel."""
    from fingerprint.cohort.records import write_manifest
    from fingerprint.cohort.training_set import write_slice_cohort
    from fingerprint.cohort.visits import plan_subjects

    levels_dir, single_dir = out / "train-levels", out / "train-single"
    plans = plan_subjects("train", subjects, TRAIN_SEED, head_set="real-calibration")
    info = {"subjects": len(plans), "visits": visits, "seed": TRAIN_SEED, "head_set": "real-calibration",
            "base_heads": sorted({p.base_head for p in plans}), "level_offsets_mm": list(LEVEL_OFFSETS_MM)}
    if not (levels_dir / "slices.npz").exists() or json.loads((levels_dir / "cohort.json").read_text()).get("subjects") != len(plans):
        started = time.perf_counter()
        scans = write_slice_cohort(levels_dir, plans, visits, workers, offsets_mm=LEVEL_OFFSETS_MM)
        write_manifest(levels_dir, {"kind": "train", **info, "scans": scans, "seconds": round(time.perf_counter() - started, 1)})
        shutil.rmtree(single_dir, ignore_errors=True)
    if not (single_dir / "slices.npz").exists():
        single_dir.mkdir(parents=True, exist_ok=True)
        with np.load(levels_dir / "slices.npz") as data:
            np.savez(single_dir / "slices.npz", slices=data["slices"][:, CANONICAL], scan_id=data["scan_id"])
        shutil.copy(levels_dir / "cohort.csv", single_dir / "cohort.csv")
        write_manifest(single_dir, {"kind": "train", **info, "channel_of": str(levels_dir), "channel": CANONICAL})
    info["generation_s"] = json.loads((levels_dir / "cohort.json").read_text()).get("seconds")
    return single_dir, levels_dir, info


# --- 2. training ----------------------------------------------------------------------------------------------------
def train_variant(cohort: Path, run_dir: Path, minutes: float, batch: int, version: str) -> dict[str, Any]:
    """The project's training loop from the shipped weights, on one thread, ``minutes`` of wall time (cached)."""
    from fingerprint.model.training.loop import TrainConfig, train

    summary = run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text())["config"].get("max_minutes") == minutes:
        return json.loads(summary.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    config = TrainConfig(
        cohort_dir=cohort, run_dir=run_dir, max_minutes=minutes, batch_size=batch, per_subject=4, threads=1,
        init_weights=SHIPPED_WEIGHTS_DIR, model_version=version, progress_bar=False, device="cpu",
    )
    return train(config)


def last_step_encoder(run_dir: Path) -> Any:
    """The encoder as training left it (the checkpoint's last step), beside the one model selection kept."""
    from fingerprint.model.backbone import resnet18_encoder
    from fingerprint.model.training.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir)["model"]
    weights = {k.removeprefix("encoder."): v.float() for k, v in state.items() if k.startswith("encoder.")}
    encoder = resnet18_encoder(in_channels=int(weights["conv1.weight"].shape[1]))
    encoder.load_state_dict(weights)
    return encoder


def training_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """What the report keeps of a run: steps, wall time, selected step and its validation figures."""
    training = summary["metadata"]["training"]
    return {
        "steps": training["steps"], "wall_time_s": training["wall_time_s"], "selected_step": training["selected_step"],
        "stopped_because": training["stopped_because"], "precision": training["precision"],
        "validation_at_selected_step": {k: training["validation_at_selected_step"].get(k) for k in ("mAP@3", "tpr@fpr0.001")},
        "validations": [{k: v.get(k) for k in ("step", "mAP@3", "tpr@fpr0.001")} for v in summary.get("validations", [])],
    }


# --- 3. held-out real scans ------------------------------------------------------------------------------------------
def real_test_cohort(path: Path, workers: int, people: int = len(REAL_TEST_HEADS)) -> Path:
    """The real-test volume cohort (the 13 held-out people x 3 visits; ``people``: the first N, for a smoke run),
    generated as ``deepbrainprint cohort generate --kind real-test`` would if absent."""
    if (path / "cohort.csv").exists():
        return path
    from fingerprint.cohort.benchmark import write_volume_cohort
    from fingerprint.cohort.records import write_manifest
    from fingerprint.cohort.visits import plan_subjects

    plans = plan_subjects("real-test", people, REAL_TEST_SEED)
    started = time.perf_counter()
    scans = write_volume_cohort(path, plans, 3, workers)
    write_manifest(path, {"kind": "real-test", "format": "volumes", "seed": REAL_TEST_SEED, "subjects": len(plans),
                          "visits": 3, "scans": scans, "real_test_heads": list(REAL_TEST_HEADS),
                          "seconds": round(time.perf_counter() - started, 1)})
    return path


def scan_jobs(real_test: Path, shared: Path, own_volumes: bool = True) -> list[tuple[str, str, str, str]]:
    """(scan_id, person, path, source) of every scan; source: ``cohort`` (real-test visits), ``own`` (a held-out
    person's own volume), ``shared-held-out`` (the Trio man's real series) or ``shared-training`` (a shared t1/
    series of a person whose warps are training subjects)."""
    from fingerprint.evaluation.identity_data import SHARED_PEOPLE

    held_out = {person_of(h) for h in REAL_TEST_HEADS}
    with open(real_test / "cohort.csv", newline="") as fh:
        jobs = [(r["scan_id"], person_of(r["base_head"]), str(real_test / r["path"]), "cohort") for r in csv.DictReader(fh)]
    for head in REAL_TEST_HEADS if own_volumes else ():
        path = source_path(head)
        if path is not None and path.is_file():
            jobs.append((f"own-{head}", person_of(head), str(path), "own"))
    for folder, person in SHARED_PEOPLE.items():
        if (shared / folder).is_dir():
            source = "shared-held-out" if person in held_out else "shared-training"
            jobs.append((folder.replace("/", "--"), person, str(shared / folder), source))
    return jobs


def scan_levels(job: tuple[str, str, str, str], cache: Path) -> np.ndarray | dict[str, Any]:
    """One scan through the real pipeline: its level stack (float16 (L,128,128)) or the rejection (cached)."""
    scan_id, _person, path, _set = job
    cached = cache / f"{scan_id}.npz"
    if cached.exists():
        with np.load(cached) as data:
            return json.loads(str(data["rejected"])) if "rejected" in data.files else data["levels"]
    import SimpleITK as sitk

    from fingerprint.errors import SeriesRejected
    from fingerprint.imaging.dicom_read import read_series
    from fingerprint.imaging.pipeline import canonical_levels

    cache.mkdir(parents=True, exist_ok=True)
    try:
        image = read_series(Path(path)).image if Path(path).is_dir() else sitk.ReadImage(path)
        levels = canonical_levels(image, LEVEL_OFFSETS_MM)[0].astype(np.float16)
    except SeriesRejected as exc:
        np.savez(cached, rejected=json.dumps(exc.as_json()))
        return exc.as_json()
    np.savez(cached, levels=levels)
    return levels


# --- 4. figures -----------------------------------------------------------------------------------------------------
def beats(model: dict[str, float], baseline: dict[str, float]) -> bool:
    """At least as good on every figure of FIGURES and better on one."""
    diffs = [model[k] - baseline[k] for k in FIGURES]
    return all(d >= -1e-9 for d in diffs) and any(d > 1e-9 for d in diffs)


def row(similarity: np.ndarray, people: np.ndarray) -> dict[str, Any]:
    """The benchmark's figures of one similarity matrix, and where its same- and different-person pairs lie."""
    from fingerprint.evaluation.identity_benchmark import retrieval_and_pairs
    from fingerprint.metrics import pair_scores

    same, different = pair_scores(similarity, people)
    return {**retrieval_and_pairs(similarity, people), "same_median": float(np.median(same)), "same_min": float(np.min(same)),
            "different_median": float(np.median(different)), "different_max": float(np.max(different))}


def evaluate(levels: np.ndarray, people: np.ndarray, encoders: dict[str, Any]) -> dict[str, np.ndarray]:
    """The similarity matrix of every row of the table on one set of scans (levels float32 (N,L,128,128))."""
    from fingerprint.evaluation.slice_benchmark import raw_pixel_vectors
    from fingerprint.metrics import cosine_similarity_matrix
    from fingerprint.model.fingerprinter import embed_batches

    single = levels[:, CANONICAL]
    vectors = {"raw pixels, canonical slice": raw_pixel_vectors(single), "raw pixels, 3 levels": raw_pixel_vectors(levels)}
    for name, (encoder, multi) in encoders.items():
        vectors[name] = embed_batches(encoder, levels if multi else single, batch_size=32)
    return {name: cosine_similarity_matrix(v) for name, v in vectors.items()}


def subset_spread(model: np.ndarray, base: np.ndarray, people: np.ndarray, draws: int = 200, keep: float = 0.75) -> dict[str, list[float]]:
    """How steady a difference of ROC AUC and TPR (model minus base) is: 5th, 50th and 95th percentile over ``draws``
    random subsets of ``keep`` of the people (whole people, all their scans), same subsets for both."""
    from fingerprint.metrics import FPR_TARGET, pair_scores, roc_auc, tpr_at_fpr

    rng = np.random.default_rng(0)
    names = np.unique(people)
    diffs: dict[str, list[float]] = {"roc_auc": [], "tpr@fpr0.001": []}
    for _ in range(draws):
        chosen = np.isin(people, rng.choice(names, size=max(2, round(keep * len(names))), replace=False))
        figures = []
        for similarity in (model, base):
            same, different = pair_scores(similarity[np.ix_(chosen, chosen)], people[chosen])
            figures.append((roc_auc(same, different), tpr_at_fpr(same, different, FPR_TARGET)[0]))
        diffs["roc_auc"].append(figures[0][0] - figures[1][0])
        diffs["tpr@fpr0.001"].append(figures[0][1] - figures[1][1])
    return {k: [round(float(q), 4) for q in np.percentile(v, [5, 50, 95])] for k, v in diffs.items()}


#: Each model of the table and the raw pixels of its own input.
OWN_INPUT = {"v2 (shipped)": "raw pixels, canonical slice", "v2 spread over 3 levels (3-level step 0)": "raw pixels, 3 levels",
             "single-slice retrain": "raw pixels, canonical slice", "3-level retrain": "raw pixels, 3 levels",
             "single-slice retrain, last step": "raw pixels, canonical slice", "3-level retrain, last step": "raw pixels, 3 levels"}


def decisions(rows: dict[str, dict[str, Any]], similarities: dict[str, np.ndarray], people: np.ndarray) -> dict[str, dict[str, Any]]:
    """Each model against the raw pixels of its own input and against shipped v2, with the subset spread of the
    difference to its own raw pixels."""
    return {name: {"beats_own_raw_pixels": beats(rows[name], rows[base]), "beats_v2": beats(rows[name], rows["v2 (shipped)"]),
                   "minus_own_raw_pixels_p05_p50_p95": subset_spread(similarities[name], similarities[base], people)}
            for name, base in OWN_INPUT.items() if name in rows}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Richer input (issue 13, part 3): three axial levels against the single canonical slice",
        "",
        f"Command: `{report['command']}`; {report['date']}, {report['machine']}.",
        f"Training: {report['training_data']['subjects']} subjects x {report['training_data']['visits']} visits warped "
        f"from the 26 REAL_CALIBRATION_HEADS (fast path, seed {report['training_data']['seed']}), levels "
        f"{report['training_data']['level_offsets_mm']} mm around MNI z = +18; budget {report['minutes']} wall minutes "
        f"per variant, batch {report['batch']}, one torch thread, niced, from the shipped v2 weights.",
        f"Trained on (warps of): {', '.join(report['trained_on_heads'])}. Tested on (held out of training and "
        f"calibration): {', '.join(report['tested_on_heads'])}.",
        *([report["note"]] if report.get("note") else []),
        "",
        "| variant | steps | wall s | stopped because | selected step | val mAP@3 | val TPR@0.1% |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in report["training"].items():
        v = t["validation_at_selected_step"]
        lines.append(f"| {name} | {t['steps']} | {t['wall_time_s']} | {t['stopped_because']} | {t['selected_step']} | "
                     f"{v['mAP@3']:.3f} | {v['tpr@fpr0.001']:.3f} |")
    for set_name, result in report["sets"].items():
        lines += ["", f"## {set_name}: {result['scans']} scans of {result['people']} people ({result['description']})", "",
                  "| input / model | recall@1 | mAP@3 | ROC AUC | TPR @ 0.1 % FPR | same: median (min) | "
                  "different: median (max) | same / different pairs |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in result["rows"].items():
            lines.append(f"| {name} | {r['recall@1']:.3f} | {r['mAP@3']:.3f} | {r['roc_auc']:.4f} | "
                         f"{r['tpr@fpr0.001']:.3f} | {r['same_median']:.4f} ({r['same_min']:.4f}) | "
                         f"{r['different_median']:.4f} ({r['different_max']:.4f}) | {r['same_pairs']} / {r['different_pairs']} |")
        lines += ["", "| model | beats the raw pixels of its own input | beats v2 | ROC AUC minus own raw pixels, "
                  "p5 / p50 / p95 over subsets of 3/4 of the people | TPR minus own raw pixels, same |", "|---|---|---|---|---|"]
        for name, d in result["decisions"].items():
            spread = d["minus_own_raw_pixels_p05_p50_p95"]
            lines.append(f"| {name} | {'yes' if d['beats_own_raw_pixels'] else 'no'} | {'yes' if d['beats_v2'] else 'no'} | "
                         f"{' / '.join(f'{v:+.4f}' for v in spread['roc_auc'])} | "
                         f"{' / '.join(f'{v:+.3f}' for v in spread['tpr@fpr0.001'])} |")
    lines += ["", f"Verdict: {report['verdict']}", "", f"Rejected by the pipeline: {report['rejected'] or 'none'}.",
              f"Wall seconds per stage (kept from the run that did it; `this_run`: the run that wrote this file): "
              f"{report['timings_s']}.", ""]
    return "\n".join(lines)


def _without_note(argv: list[str]) -> list[str]:
    """The command line without its ``--note`` (the note has a line of its own in the report)."""
    out, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--note="):
            skip = False
            continue
        skip = arg == "--note"
        if not skip:
            out.append(arg)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="Wall minutes of training per variant.")
    parser.add_argument("--subjects", type=int, default=416, help="Training subjects (16 per real calibration head).")
    parser.add_argument("--visits", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/richer-input"))
    parser.add_argument("--real-test", type=Path, default=Path("cohorts/real-test"))
    parser.add_argument("--shared", type=Path, default=SHARED_DATA)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="A line for the report (how the run was made, if not by this command alone).")
    parser.add_argument("--test-people", type=int, default=len(REAL_TEST_HEADS),
                        help="Smoke runs: only the first N held-out people in the real-test cohort, and no own volumes.")
    args = parser.parse_args()
    _threads(1)
    assert not set(REAL_TEST_HEADS) & set(REAL_CALIBRATION_HEADS)
    timings_file = args.out / "timings.json"  # a stage's time is kept from the run that did it, not a cached re-run
    timings: dict[str, Any] = json.loads(timings_file.read_text()) if timings_file.exists() else {}

    def record(key: str, started: float, cached: bool) -> None:
        if not cached or key not in timings:
            timings[key] = "cached" if cached else round(time.perf_counter() - started, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        timings_file.write_text(json.dumps(timings, indent=2) + "\n")

    t0 = time.perf_counter()
    cached = (args.out / "train-levels" / "slices.npz").exists()
    single_dir, levels_dir, data_info = training_cohorts(args.out, args.subjects, args.visits, args.workers)
    record("training_data", t0, cached)

    from fingerprint.model.encoder import load_encoder, spread_input_channels

    runs = {"single-slice retrain": (single_dir, args.out / "run-single"), "3-level retrain": (levels_dir, args.out / "run-levels")}
    summaries = {}
    for name, (cohort, run_dir) in runs.items():
        t, cached = time.perf_counter(), (run_dir / "summary.json").exists()
        summaries[name] = train_variant(cohort, run_dir, args.minutes, args.batch, f"richer-input-{run_dir.name}")
        record(f"train {name}", t, cached)

    t, cached = time.perf_counter(), (args.real_test / "cohort.csv").exists()
    real_test = real_test_cohort(args.real_test, args.workers, args.test_people)
    record("real_test_cohort", t, cached)
    t = time.perf_counter()
    jobs = scan_jobs(real_test, args.shared, own_volumes=args.test_people == len(REAL_TEST_HEADS))
    cached = all((args.out / "views" / f"{job[0]}.npz").exists() for job in jobs)
    outcomes = [scan_levels(job, args.out / "views") for job in jobs]
    record("real_pipeline", t, cached)
    rejected = {job[0]: o for job, o in zip(jobs, outcomes) if isinstance(o, dict)}
    kept = [(job, o) for job, o in zip(jobs, outcomes) if not isinstance(o, dict)]

    v2 = load_encoder(SHIPPED_WEIGHTS_DIR)[0]
    encoders = {
        "v2 (shipped)": (v2, False),
        "v2 spread over 3 levels (3-level step 0)": (spread_input_channels(v2, len(LEVEL_OFFSETS_MM)), True),
        "single-slice retrain": (load_encoder(Path(summaries["single-slice retrain"]["model_dir"]))[0], False),
        "3-level retrain": (load_encoder(Path(summaries["3-level retrain"]["model_dir"]))[0], True),
        "single-slice retrain, last step": (last_step_encoder(args.out / "run-single"), False),
        "3-level retrain, last step": (last_step_encoder(args.out / "run-levels"), True),
    }
    descriptions = {
        "held-out": "real-test cohort (3 simulated visits of each REAL_TEST_HEADS person through the real pipeline), "
                    "their own volumes, and the shared series of the held-out Trio man (2010 Trio + 4 decubitus 2022)",
        "as the model card's real-head benchmark": "real-test cohort plus the nine real series of the shared data (four "
                    "of them people whose warps are training subjects: one scan each, different-person pairs only)",
    }
    sets: dict[str, Any] = {}
    for set_name, wanted in (("held-out", {"cohort", "own", "shared-held-out"}),
                             ("as the model card's real-head benchmark", {"cohort", "shared-held-out", "shared-training"})):
        chosen = [(job, o) for job, o in kept if job[3] in wanted]
        levels = np.stack([o.astype(np.float32) for _, o in chosen])
        people = np.asarray([job[1] for job, _ in chosen])
        similarities = evaluate(levels, people, encoders)
        rows = {name: row(similarity, people) for name, similarity in similarities.items()}
        sets[set_name] = {"scans": len(chosen), "people": len(set(people.tolist())), "description": descriptions[set_name],
                          "rows": rows, "decisions": decisions(rows, similarities, people)}
    held = sets["held-out"]["decisions"]
    shippable = [n for n in held if "retrain" in n and held[n]["beats_own_raw_pixels"] and held[n]["beats_v2"]]
    verdict = (f"{', '.join(shippable)} beat(s) its own raw pixels and v2 on the held-out real heads: report before shipping"
               if shippable else "no retrained variant beats both the raw pixels of its own input and v2 on the held-out "
               "real heads: nothing is shipped, fingerprint/weights is unchanged")
    timings["this_run"] = round(time.perf_counter() - t0, 1)
    report = {
        "command": "OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python bench/experiment_richer_input.py "
                   + " ".join(_without_note(sys.argv[1:])),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared, torch threads 1",
        "minutes": args.minutes, "batch": args.batch, "training_data": data_info,
        "trained_on_heads": list(REAL_CALIBRATION_HEADS), "tested_on_heads": list(REAL_TEST_HEADS),
        "training": {name: training_figures(s) for name, s in summaries.items()},
        "note": args.note, "sets": sets, "verdict": verdict, "rejected": rejected, "timings_s": timings,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "richer_input.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.results / "richer_input.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
