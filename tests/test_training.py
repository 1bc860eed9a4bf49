"""Training: LARS and the schedule behave, a 3-step run on tiny data checkpoints, resumes and exports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fingerprint.model import fingerprinter as api
from fingerprint.model.training.data import (
    load_cohort,
    pk_batches,
    train_validation_split,
)
from fingerprint.model.training.lars import LARS, lars_for
from fingerprint.model.training.loop import TrainConfig, train
from fingerprint.model.training.schedule import lr_factor

torch.set_num_threads(1)


def _tiny_cohort(folder: Path, subjects: int = 10, visits: int = 3, with_val: bool = True) -> Path:
    """cohort.csv + slices.npz as the generator writes them: each subject a texture, visits a little noisier."""
    rng = np.random.default_rng(0)
    rows, slices = [], []
    for s in range(subjects):
        base = rng.random((128, 128)).astype(np.float32)
        for v in range(visits):
            scan_id = f"s{s:02d}v{v}"
            split = "val" if with_val and s >= subjects - 3 else "train"
            rows.append(dict(scan_id=scan_id, subject_id=f"sub{s:02d}", visit=v, date=f"202{v}-01-01",
                             base_head="tiny", split=split))
            slices.append((base + 0.1 * rng.random((128, 128))).astype(np.float16))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cohort.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    np.savez(folder / "slices.npz", slices=np.stack(slices), scan_id=np.array([r["scan_id"] for r in rows]))
    return folder


def test_lr_schedule_warms_up_then_decays_and_scales_with_batch() -> None:
    assert lr_factor(0.0, 256) < 0.01
    assert lr_factor(10 / 180, 256) == pytest.approx(1.0)
    assert lr_factor(10 / 180, 64) == pytest.approx(0.25)
    assert lr_factor(0.5, 256) < lr_factor(0.2, 256)
    assert lr_factor(1.0, 256) == pytest.approx(0.001)


def test_lars_step_size_is_relative_to_weight_norm_and_skips_biases() -> None:
    big = torch.nn.Parameter(torch.full((4, 4), 10.0))
    small = torch.nn.Parameter(torch.full((4, 4), 0.1))
    bias = torch.nn.Parameter(torch.zeros(4))
    opt = LARS([{"params": [big, small, bias]}], lr=1.0, weight_decay=0.0, momentum=0.0, eta=0.01)
    for p in (big, small, bias):
        p.grad = torch.ones_like(p)
    opt.step()
    assert torch.allclose(10.0 - big.detach(), torch.full((4, 4), 0.01 * 40.0 / 4.0), rtol=1e-4)  # eta·‖w‖/‖g‖ · g
    # every multi-dimensional tensor moves by eta × its own norm, whatever its gradient's size
    relative_big = float((10.0 - big.detach()).norm() / 40.0)
    assert relative_big == pytest.approx(float((0.1 - small.detach()).norm() / 0.4), rel=1e-4)
    assert torch.allclose(bias.detach(), torch.full((4,), -1.0))  # plain SGD for biases


def test_param_groups_follow_the_paper() -> None:
    opt = lars_for(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)))
    weights, biases = opt.param_groups
    assert weights["base_lr"] == 0.2 and biases["base_lr"] == 0.0048
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in biases["params"])


def test_pk_batches_hold_several_scans_per_subject(tmp_path: Path) -> None:
    data = load_cohort(_tiny_cohort(tmp_path / "c", subjects=20, with_val=False))
    train_set, val_set = train_validation_split(data, fraction=0.2, seed=1)
    assert set(train_set.subjects).isdisjoint(val_set.subjects) and len(set(val_set.subjects)) == 4
    batches = list(pk_batches(train_set.labels, batch_size=8, per_subject=2, rng=np.random.default_rng(0)))
    assert len(batches) == 16 // 4
    for batch in batches:
        labels = train_set.labels[batch]
        assert len(set(batch.tolist())) == len(batch) == 8
        assert all(np.sum(labels == label) == 2 for label in labels)


@pytest.mark.slow
def test_three_step_run_checkpoints_resumes_and_exports(tmp_path: Path) -> None:
    cohort = _tiny_cohort(tmp_path / "cohort")
    run = tmp_path / "run"
    common = dict(cohort_dir=cohort, run_dir=run, batch_size=8, per_subject=2, validate_every=2,
                  progress_bar=False, model_version="tiny-test", threads=1)
    first = train(TrainConfig(max_steps=3, **common))
    assert first["metadata"]["training"]["steps"] == 3
    assert (run / "checkpoint.pt").exists() and (run / "training_curve.png").stat().st_size > 1000
    weights_after_3 = torch.load(run / "checkpoint.pt", weights_only=False)["model"]

    second = train(TrainConfig(max_steps=5, **common))
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()
             if "validation" not in line]
    assert steps == [1, 2, 3, 4, 5]  # continued, not restarted
    assert second["metadata"]["training"]["steps"] == 5
    weights_after_5 = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    moved = [k for k in weights_after_3 if weights_after_3[k].is_floating_point()
             and not torch.equal(weights_after_3[k], weights_after_5[k])]
    assert moved, "resuming must keep training the same weights"

    model = api.load_model(run / "model")
    assert model.model_version == "tiny-test"
    vectors = model.embed(np.zeros((2, 128, 128), np.float32))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_thread_tuner_probes_the_other_count_and_keeps_the_faster() -> None:
    from fingerprint.model.training.loop import ThreadTuner

    tuner = ThreadTuner([1, 2], period=10, probe=2)
    seconds = {1: 3.0, 2: 1.0}  # two threads faster (an idle machine)
    used = []
    for _ in range(20):
        threads = tuner.threads_for_next_step()
        used.append(threads)
        tuner.record(threads, seconds[threads])
    assert used[:8] == [1] * 8 and used[8:10] == [2, 2]  # probe at the end of the first period
    assert tuner.current == 2 and used[10:18] == [2] * 8
    seconds = {1: 3.0, 2: 12.0}  # the machine got busy: two threads now much slower
    for _ in range(10):
        threads = tuner.threads_for_next_step()
        tuner.record(threads, seconds[threads])
    assert tuner.current == 1
    torch.set_num_threads(1)


@pytest.mark.slow
def test_fine_tuning_starts_from_given_weights(tmp_path: Path) -> None:
    from fingerprint.model.encoder import save_encoder, seeded_encoder

    start = seeded_encoder(seed=5)
    save_encoder(start, tmp_path / "start", {"model_version": "start-5"})
    cohort = _tiny_cohort(tmp_path / "cohort")
    summary = train(TrainConfig(cohort_dir=cohort, run_dir=tmp_path / "run", max_steps=1, batch_size=8, per_subject=2,
                                progress_bar=False, threads=1, init_weights=tmp_path / "start",
                                weights_lr=0.0, biases_lr=0.0))
    assert "fine-tuned from" in summary["metadata"]["training"]["pretrained_weights"]
    tuned = api.load_model(tmp_path / "run" / "model").encoder.state_dict()
    other = seeded_encoder(seed=6).state_dict()
    for name, value in start.state_dict().items():
        if name.endswith("weight"):  # lr 0: weights are the starting ones (up to float16 storage), not another init
            assert torch.allclose(tuned[name], value, atol=2e-3), name
    assert not torch.allclose(other["conv1.weight"], tuned["conv1.weight"], atol=2e-3)


@pytest.mark.slow
def test_a_resumed_fine_tune_still_says_where_it_started(tmp_path: Path) -> None:
    """model.json must not claim 'trained from scratch' after ``--resume`` without ``--init`` (the model card quotes it)."""
    from fingerprint.model.encoder import save_encoder, seeded_encoder

    save_encoder(seeded_encoder(seed=5), tmp_path / "start", {"model_version": "start-5"})
    cohort = _tiny_cohort(tmp_path / "cohort")
    common = dict(cohort_dir=cohort, run_dir=tmp_path / "run", batch_size=8, per_subject=2, progress_bar=False, threads=1)
    train(TrainConfig(**common, max_steps=1, init_weights=tmp_path / "start"))
    resumed = train(TrainConfig(**common, max_steps=2))
    assert resumed["metadata"]["training"]["pretrained_weights"] == f"fine-tuned from {tmp_path / 'start'}"


def test_selection_score_counts_verification_once_retrieval_saturates() -> None:
    """On a long GPU run mAP@3 sits at ~1 for thousands of steps; the TPR at 0.1 % FPR must still tell them apart."""
    from fingerprint.model.training.loop import selection_score

    early = {"mAP@3": 0.99, "tpr@fpr0.001": 0.90}
    later = {"mAP@3": 0.99, "tpr@fpr0.001": 0.95}
    assert selection_score(later) > selection_score(early)
    assert selection_score({"mAP@3": 0.95, "tpr@fpr0.001": 0.97}) > selection_score({"mAP@3": 0.97, "tpr@fpr0.001": 0.90})


def test_training_imports_without_simpleitk() -> None:
    """A GPU machine often has torch but no SimpleITK: the trainer and its CLI must import without it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('SimpleITK', 'pydicom', 'faiss', 'torchio', 'nibabel'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import fingerprint.model.training.loop, deepbrainprint.cli.app\n"
        "assert 'SimpleITK' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
