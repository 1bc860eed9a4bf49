"""Evaluation arithmetic on hand-made similarity matrices whose recall, mAP, AUC and TPR are known."""

from __future__ import annotations

import numpy as np
import pytest

from fingerprint.metrics import (
    cosine_similarity_matrix,
    retrieval_metrics,
    roc_auc,
    tpr_at_fpr,
    verification_metrics,
)


def _symmetric(entries: dict[tuple[int, int], float], n: int) -> np.ndarray:
    sim = np.zeros((n, n))
    for (i, j), value in entries.items():
        sim[i, j] = sim[j, i] = value
    return sim


def test_retrieval_on_a_hand_made_matrix() -> None:
    # person A: scans 0,1,2 ; person B: scans 3,4 ; person C: scan 5 (unscorable: no other scan)
    labels = np.array(["A", "A", "A", "B", "B", "C"])
    sim = _symmetric(
        {
            (0, 1): 0.9, (0, 2): 0.8, (0, 3): 0.1, (0, 4): 0.1, (0, 5): 0.0,  # 0: A A first -> AP@3 = 1
            (1, 2): 0.2, (1, 3): 0.7, (1, 4): 0.1, (1, 5): 0.0,  # 1: A(0.9) B(0.7) A(0.2): AP = (1 + 2/3) / 2
            (2, 3): 0.95, (2, 4): 0.3, (2, 5): 0.0,  # 2: B(0.95) A(0.8) B(0.3): AP = (1/2) / 2, miss @1
            (3, 4): 0.5, (3, 5): 0.0,  # 3: A(0.95) A(0.7) B(0.5): AP = (1/3)/1, miss @1, hit @3
            (4, 5): 0.6,  # 4: C(0.6) B(0.5) A(0.3): AP = (1/2)/1
        },
        6,
    )
    result = retrieval_metrics(sim, labels)
    assert result["queries"] == 5 and result["unscorable_queries"] == 1
    assert result["recall@1"] == pytest.approx(2 / 5)
    assert result["recall@3"] == pytest.approx(5 / 5)
    expected_ap = [1.0, (1 + 2 / 3) / 2, 0.25, 1 / 3, 0.5]
    assert result["mAP@3"] == pytest.approx(np.mean(expected_ap))
    assert result["mAP@1"] == pytest.approx(2 / 5)


def test_perfect_and_random_fingerprints() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(50), 3)
    centres = rng.normal(size=(50, 64))
    perfect = centres[labels] + 0.01 * rng.normal(size=(150, 64))
    good = all_ok = retrieval_metrics(cosine_similarity_matrix(perfect), labels)
    assert all_ok["recall@1"] == 1.0 and good["mAP@3"] == 1.0
    noise = retrieval_metrics(cosine_similarity_matrix(rng.normal(size=(150, 64))), labels)
    assert noise["recall@1"] < 0.2
    verification = verification_metrics(cosine_similarity_matrix(perfect), labels)
    assert verification["roc_auc"] == 1.0 and verification["tpr@fpr0.001"] == 1.0
    assert verification["same_pairs"] == 150 and verification["different_pairs"] == 150 * 149 // 2 - 150


def test_roc_auc_counts_ties_half_and_orders() -> None:
    assert roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert roc_auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert roc_auc(np.array([0.5]), np.array([0.5])) == 0.5
    assert roc_auc(np.array([0.5, 0.9]), np.array([0.5, 0.1])) == pytest.approx((0.5 + 1 + 1 + 1) / 4)


def test_tpr_at_fpr_threshold_keeps_false_positives_within_target() -> None:
    negatives = np.linspace(0, 1, 2000)  # 0.1% of 2000 = 2 negatives may lie above the threshold
    positives = np.array([0.9985, 0.9995, 1.5, 2.0])
    tpr, threshold = tpr_at_fpr(positives, negatives, 1e-3)
    assert np.mean(negatives > threshold) <= 1e-3
    assert threshold == pytest.approx(negatives[-3])
    assert tpr == pytest.approx(3 / 4)


def test_benchmark_driver_writes_tables_and_compares_to_raw_pixels(tmp_path) -> None:
    """The `evaluate` driver on a slice-cache cohort: every row present, files written, raw pixels near-perfect on
    slices that differ only by a little noise (a sanity check the driver's labels line up with its vectors)."""
    import json

    import torch

    from fingerprint.evaluation.slice_benchmark import run_benchmark
    from fingerprint.model.encoder import save_encoder, seeded_encoder
    from tests.test_training import _tiny_cohort

    torch.set_num_threads(1)
    cohort = _tiny_cohort(tmp_path / "cohort", subjects=6, visits=3, with_val=False)
    save_encoder(seeded_encoder(seed=11), tmp_path / "other", {"model_version": "other-11"})
    save_encoder(seeded_encoder(seed=12), tmp_path / "main", {"model_version": "main-12"})
    report = run_benchmark(cohort, tmp_path / "out", model_path=tmp_path / "main", others={"ssl-only": tmp_path / "other"})
    names = [row["name"] for row in report["rows"]]
    assert names == ["main-12", "ssl-only", "untrained-0 (random init)", "raw pixels"]
    raw = report["rows"][-1]
    assert raw["recall@1"] == 1.0 and raw["scans"] == 18 and raw["subjects"] == 6
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(saved["rows"]) == 4
    assert "| raw pixels |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "similarity_histograms.png").stat().st_size > 1000


def test_volume_cohort_is_sliced_once_and_extended(tmp_path) -> None:
    """Benchmark volumes go through the real slice pipeline; the cache grows with --subjects and is reused."""
    import csv

    import SimpleITK as sitk

    from fingerprint.imaging.reference import load_colin27
    from fingerprint.model.training.data import load_volume_cohort

    head = load_colin27()
    head = sitk.Shrink(head, [2, 2, 2])  # 2 mm: fast, still a head the pipeline aligns
    (tmp_path / "volumes").mkdir()
    rows = []
    for subject, visit in [("a", 0), ("a", 1), ("b", 0)]:
        path = f"volumes/{subject}{visit}.nii.gz"
        sitk.WriteImage(head, str(tmp_path / path))
        rows.append({"scan_id": f"{subject}{visit}", "subject_id": subject, "path": path})
    (tmp_path / "volumes" / "c0.nii.gz").write_bytes(b"not a volume")
    rows.append({"scan_id": "c0", "subject_id": "c", "path": "volumes/c0.nii.gz"})
    with open(tmp_path / "cohort.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["scan_id", "subject_id", "path"])
        writer.writeheader()
        writer.writerows(rows)
    cache = tmp_path / "cache"
    first = load_volume_cohort(tmp_path, "middle", cache, subjects=1)
    assert list(first.scan_ids) == ["a0", "a1"] and first.slices.shape == (2, 128, 128)
    cached = np.load(cache / "slices-middle.npz")
    assert sorted(cached["scan_id"].tolist()) == ["a0", "a1"]
    both = load_volume_cohort(tmp_path, "middle", cache)
    assert list(both.scan_ids) == ["a0", "a1", "b0"]
    assert both.rejected["c0"]["rejected"] == "unreadable_volume"  # reported, and the others still sliced
    np.testing.assert_array_equal(both.slices[:2], first.slices)
    assert sorted(np.load(cache / "slices-middle.npz")["scan_id"].tolist()) == ["a0", "a1", "b0"]


def test_volume_cohort_sliced_on_two_workers_equals_one(tmp_path) -> None:
    """Parallel slicing (evaluate --workers) must give the same slices, in CSV order, as slicing in process: the
    single-threaded alignment is repeatable, so the cache does not depend on how it was filled."""
    import csv

    import SimpleITK as sitk

    from fingerprint.imaging.reference import load_colin27
    from fingerprint.model.training.data import load_volume_cohort

    head = sitk.Shrink(load_colin27(sitk.sitkFloat32), [2, 2, 2])
    turn = sitk.Euler3DTransform((0.0, -18.0, 18.0), 0.12, 0.0, 0.05, (4.0, -3.0, 6.0))
    (tmp_path / "volumes").mkdir()
    rows = []
    for name, image in [("a0", head), ("a1", sitk.Resample(head, turn)), ("b0", sitk.Resample(head, turn.GetInverse()))]:
        sitk.WriteImage(image, str(tmp_path / "volumes" / f"{name}.nii.gz"))
        rows.append({"scan_id": name, "subject_id": name[0], "path": f"volumes/{name}.nii.gz"})
    with open(tmp_path / "cohort.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["scan_id", "subject_id", "path"])
        writer.writeheader()
        writer.writerows(rows)
    serial = load_volume_cohort(tmp_path, "anatomical", tmp_path / "serial", workers=1)
    parallel = load_volume_cohort(tmp_path, "anatomical", tmp_path / "parallel", workers=2)
    assert list(parallel.scan_ids) == ["a0", "a1", "b0"] == list(serial.scan_ids)
    np.testing.assert_array_equal(parallel.slices, serial.slices)
    assert float(np.abs(serial.slices[0].astype(np.float32) - serial.slices[1].astype(np.float32)).max()) > 0  # not trivially equal
