"""The training loop: two augmented views per scan, the DeepBrainPrint loss, LARS, validation-based model selection.

Why progress, not epochs, drives β and the learning rate: the paper trains 180 epochs on a GPU; here training is
bounded by wall time on two shared CPU cores. Progress = max(steps done / steps planned, time used / time budget),
so β(t) = 1 − t/H and the cosine schedule both complete exactly when the budget runs out, however fast the machine.

Why validation figures rather than validation loss select the model: with β changing over training, the loss at two
points in time weighs its terms differently and is not comparable. The score is mAP@3 + TPR at 0.1 % FPR on the
patient-disjoint split (:func:`selection_score`): retrieval alone saturates on a long GPU run (mAP@3 near 1 for
thousands of steps, so the earliest of many equal encoders would win), while the verdicts rest on the verification
figure. Early stopping counts validations without improvement of that score.

On a GPU the training slices are copied to the device once (a 1000-subject cohort is ~130 MB of float16): a step
then indexes them there instead of gathering, converting and copying a batch from host memory.

Resuming restores model, optimiser, RNGs, history and the time already spent (a new epoch starts on resume).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fingerprint.metrics import all_metrics
from fingerprint.model.augment import AugmentConfig, augment_batch, slicer_region
from fingerprint.model.backbone import resnet18_encoder
from fingerprint.model.encoder import TrainingNet, save_encoder
from fingerprint.model.fingerprinter import embed_batches
from fingerprint.model.losses import beta_at, branch_beta, deepbrainprint_loss
from fingerprint.model.training.checkpoint import load_checkpoint, save_checkpoint
from fingerprint.model.training.data import (
    SliceSet,
    load_cohort,
    pk_batches,
    train_validation_split,
)
from fingerprint.model.training.lars import lars_for
from fingerprint.model.training.plot import plot_history
from fingerprint.model.training.schedule import apply_lr, lr_factor
from fingerprint.types import SLICE_SIZE, SLICE_SPACING_MM

EXPORT_DIR = "model"
MAX_VALIDATION_SCANS = 600
VALIDATION_BATCH = 128  # slices per forward pass when validating


@dataclass
class TrainConfig:
    """Everything a run depends on (stored in its checkpoint and model.json)."""

    cohort_dir: Path
    run_dir: Path
    max_minutes: float | None = None  # wall-time budget; None: only epochs/max_steps bound the run
    epochs: int = 180  # the paper's
    max_steps: int | None = None  # overrides epochs × steps per epoch
    batch_size: int = 64
    per_subject: int = 4  # K of the P×K batches
    beta_schedule: str = "linear"
    beta_switch: float = 0.5  # for the step schedule
    branch: str = "both"  # both | ssl | supervised (the ablations)
    nce_weight: float = 1e4
    weights_lr: float = 0.2
    biases_lr: float = 0.0048
    weight_decay: float = 1e-6
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 where the hardware has it) | bf16 | fp32
    threads: int | None = None  # torch intra-op threads on CPU; None: chosen by measurement (ThreadTuner)
    seed: int = 0
    validate_every: int | None = None  # steps; None: once per epoch
    patience: int = 10  # validations without mAP@3 improvement before stopping
    checkpoint_every_s: float = 120.0
    slice_method: str = "anatomical"  # used when the cohort holds volumes
    model_version: str | None = None
    init_weights: Path | None = None  # start the encoder from these weights (fine-tuning) instead of random
    # The input channels follow the cohort: (N,128,128) slices train a 1-channel encoder, (N,L,128,128) level stacks an
    # L-channel one (a 1-channel init_weights is then spread over the L channels: encoder.spread_input_channels).
    progress_bar: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    return torch.device(requested)


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast roughly halves a ResNet-18 step here (0.81 s -> 0.36 s, batch 64)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32."""
    if requested == "fp32":
        return None
    if requested == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_bf16() else None


class ThreadTuner:
    """Picks the CPU thread count by measuring, again and again, because the best one changes with the machine's load.

    Measured here: with both cores free, 2 threads make a step ~1.8× faster than 1; with other jobs running, 2 threads
    made a step ~4× *slower* than 1 (13 s vs 3 s: each thread waits for the other at every barrier while the other is
    descheduled). Every ``period`` steps the other candidate runs ``probe`` steps; the faster median wins.
    """

    def __init__(self, candidates: list[int], period: int = 100, probe: int = 3) -> None:
        self.candidates = candidates
        self.period = period
        self.probe = probe
        self.current = candidates[0]
        self.times: dict[int, list[float]] = {c: [] for c in candidates}
        self._step = 0
        torch.set_num_threads(self.current)

    def threads_for_next_step(self) -> int:
        cycle = self._step % self.period
        other = [c for c in self.candidates if c != self.current]
        if other and cycle >= self.period - self.probe:
            return other[0]
        return self.current

    def record(self, threads: int, seconds: float) -> None:
        self._step += 1
        self.times[threads] = (self.times[threads] + [seconds])[-self.probe :]
        if self._step % self.period == 0 and len(self.candidates) > 1:
            medians = {c: float(np.median(t)) for c, t in self.times.items() if t}
            self.current = min(medians, key=medians.get)


def validate(encoder, val: SliceSet, device, autocast_dtype) -> dict[str, Any]:
    vectors = embed_batches(encoder, val.slices, batch_size=VALIDATION_BATCH, device=device, autocast_dtype=autocast_dtype)
    metrics = all_metrics(vectors, val.labels)
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def selection_score(metrics: dict[str, Any]) -> float:
    """What model selection and early stopping maximise: mAP@3 + TPR at FPR 0.1 % (each in [0, 1])."""
    return float(metrics["mAP@3"]) + float(metrics.get("tpr@fpr0.001", 0.0))


def _validation_subset(val: SliceSet, seed: int) -> SliceSet:
    """At most MAX_VALIDATION_SCANS scans of whole subjects (so each query keeps its positives)."""
    subjects = np.unique(val.subjects)
    per_subject = max(1, len(val) / max(1, len(subjects)))
    keep_subjects = int(MAX_VALIDATION_SCANS // per_subject)
    if keep_subjects >= len(subjects):
        return val
    chosen = np.random.default_rng(seed).choice(subjects, size=keep_subjects, replace=False)
    return val.subset(np.isin(val.subjects, chosen))


def _model_metadata(
    config: TrainConfig, state: dict[str, Any], data_info: dict[str, Any], channels: int = 1
) -> dict[str, Any]:
    best = state.get("best") or {}
    inputs = "1 input channel" if channels == 1 else f"{channels} input channels (axial levels)"
    return {
        "model_version": config.model_version or f"dbp-r18-{datetime.now(timezone.utc):%Y%m%d}-{config.branch}",
        "architecture": f"torchvision ResNet-18, {inputs}, global-pooled 512-d output (fc = identity)",
        "input": {
            "shape": [SLICE_SIZE, SLICE_SIZE],
            "spacing_mm": SLICE_SPACING_MM,
            "intensity": "robustly normalised to about [0, 1], zero background",
            "slice_method": config.slice_method,
        },
        "output": "512 float32, L2-normalised at inference",
        "training": {
            "cohort": str(config.cohort_dir),
            **data_info,
            "branch": config.branch,
            "beta_schedule": config.beta_schedule,
            "steps": state["step"],
            "epochs_completed": state["epoch"],
            "wall_time_s": round(state["elapsed_s"], 1),
            "selected_step": best.get("step"),
            "validation_at_selected_step": best.get("metrics"),
            "stopped_because": state.get("stopped_because"),
            "device": state.get("device"),
            "precision": state.get("precision"),
            "pretrained_weights": "none (trained from scratch: no ImageNet weights can be downloaded here)"
            if config.init_weights is None else f"fine-tuned from {config.init_weights}",
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _config_json(config: TrainConfig) -> dict[str, Any]:
    data = asdict(config)
    return json.loads(json.dumps(data, default=str))


def train(config: TrainConfig) -> dict[str, Any]:
    """Train (or resume) a run in ``config.run_dir``; exports the selected encoder to ``run_dir/model``.

    Returns the run summary (also written to ``run_dir/summary.json``).
    """
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    autocast_dtype = resolve_precision(config.precision, device)
    tuner = None
    if device.type == "cpu":
        candidates = [config.threads] if config.threads else sorted({1, os.cpu_count() or 1})
        tuner = ThreadTuner(candidates)
    torch.manual_seed(config.seed)

    data = load_cohort(config.cohort_dir, config.slice_method, cache_dir=run_dir / "slice-cache")
    train_set, val_set = train_validation_split(data, seed=config.seed)
    val_set = _validation_subset(val_set, config.seed)
    data_info = {
        "train_scans": len(train_set),
        "train_subjects": int(len(np.unique(train_set.subjects))),
        "validation_scans": len(val_set),
        "validation_subjects": int(len(np.unique(val_set.subjects))),
    }
    labels_all = train_set.labels
    # The training set lives on the training device, indexed per step (on the CPU this shares the numpy array).
    train_slices = torch.from_numpy(train_set.slices).to(device)
    region = slicer_region(train_set.slices).to(device)  # where the slicer keeps pixels: its canonical mask
    group = max(1, config.batch_size // config.per_subject)
    steps_per_epoch = max(1, len(np.unique(labels_all)) // group)
    planned_steps = config.max_steps or config.epochs * steps_per_epoch
    budget_s = config.max_minutes * 60.0 if config.max_minutes else None
    validate_every = config.validate_every or steps_per_epoch

    channels = 1 if train_set.slices.ndim == 3 else int(train_set.slices.shape[1])
    model = TrainingNet(resnet18_encoder(in_channels=channels))
    if config.init_weights is not None:
        from fingerprint.model.encoder import load_encoder, spread_input_channels

        initial = load_encoder(config.init_weights)[0]
        if channels != 1 and initial.conv1.weight.shape[1] == 1:
            initial = spread_input_channels(initial, channels)
        model.encoder.load_state_dict(initial.state_dict())
    model = model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    optimizer = lars_for(model, config.weights_lr, config.biases_lr, config.weight_decay)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    state: dict[str, Any] = {
        "step": 0, "epoch": 0, "elapsed_s": 0.0, "history": [], "validations": [], "best": None,
        "bad_validations": 0, "stopped_because": None,
        "device": str(device), "precision": str(autocast_dtype or torch.float32).replace("torch.", ""),
    }
    best_encoder_state = None
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        for group_state, base in zip(optimizer.param_groups, (config.weights_lr, config.biases_lr)):
            group_state["base_lr"] = base
        generator.set_state(checkpoint["torch_generator"])
        rng.bit_generator.state = checkpoint["numpy_rng"]
        state.update(checkpoint["state"])
        best_encoder_state = checkpoint.get("best_encoder")
        if config.init_weights is None and (checkpoint.get("config") or {}).get("init_weights"):
            config.init_weights = Path(checkpoint["config"]["init_weights"])  # a resumed fine-tune is still one
        if not str(state["stopped_because"] or "").startswith("early stopping"):
            state["stopped_because"] = None  # a larger budget or more steps continue the run
        if state.get("cohort") != str(config.cohort_dir):  # e.g. continued on a larger cohort: new validation set,
            state["best"], state["bad_validations"] = None, 0  # whose figures are not comparable with the old ones
            best_encoder_state = None
    state["cohort"] = str(config.cohort_dir)

    def progress() -> float:
        by_steps = state["step"] / planned_steps
        by_time = state["elapsed_s"] / budget_s if budget_s else 0.0
        return max(by_steps, by_time)

    def write_checkpoint() -> None:
        save_checkpoint(run_dir, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "torch_generator": generator.get_state(), "numpy_rng": rng.bit_generator.state,
            "state": state, "best_encoder": best_encoder_state, "planned_steps": planned_steps,
            "config": _config_json(config),
        })
        plot_history(state["history"], state["validations"], run_dir / "training_curve.png")

    def run_validation() -> bool:
        """Validate, keep the best encoder; True when early stopping says stop."""
        nonlocal best_encoder_state
        metrics = validate(model.encoder, val_set, device, autocast_dtype)
        record = {"step": state["step"], "epoch": state["epoch"], "elapsed_s": round(state["elapsed_s"], 1), **metrics}
        state["validations"].append(record)
        log.write(json.dumps({"validation": record}) + "\n")
        log.flush()
        best = state["best"]
        if best is None or selection_score(metrics) > selection_score(best["metrics"]) + 1e-4:
            state["best"] = {"step": state["step"], "metrics": metrics}
            state["bad_validations"] = 0
            best_encoder_state = {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}
            return False
        state["bad_validations"] += 1
        return state["bad_validations"] >= config.patience

    def one_step(indices: np.ndarray) -> dict[str, Any]:
        """Two augmented views of the batch, the loss at the current progress, one LARS step; the log record."""
        threads = tuner.threads_for_next_step() if tuner else 0
        if tuner:
            torch.set_num_threads(threads)
        started = time.monotonic()
        images = train_slices[torch.from_numpy(indices).to(device)].float()
        images = images.unsqueeze(1) if images.ndim == 3 else images  # levels are already the channels
        labels = torch.from_numpy(labels_all[indices]).to(device)
        views = [augment_batch(images, config.augment, generator, region) for _ in range(2)]
        if device.type == "cpu":
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        t = progress()
        beta = branch_beta(beta_at(t, config.beta_schedule, config.beta_switch), config.branch)
        lr = apply_lr(optimizer, lr_factor(t, config.batch_size))
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            _, p1 = model(views[0])
            _, p2 = model(views[1])
        loss, parts = deepbrainprint_loss(p1.float(), p2.float(), labels, beta, config.nce_weight)
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            optimizer.step()
        else:
            parts["skipped_non_finite"] = True
        state["step"] += 1
        step_s = time.monotonic() - started
        state["elapsed_s"] += step_s
        if tuner:
            tuner.record(threads, step_s)
        return {"step": state["step"], "epoch": state["epoch"], "lr": lr, "progress": round(t, 5),
                "step_s": round(step_s, 3), "threads": threads, **parts}

    from tqdm import tqdm

    log = open(run_dir / "log.jsonl", "a")
    bar = tqdm(total=1000, disable=not config.progress_bar, desc=f"train {config.branch}", unit="‰")
    last_checkpoint = time.monotonic()
    stop = state["stopped_because"] is not None
    try:
        try:
            while not stop and progress() < 1.0:
                model.train()
                for indices in pk_batches(labels_all, config.batch_size, config.per_subject, rng):
                    record = one_step(indices)
                    state["history"].append(record)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    bar.n = min(1000, int(progress() * 1000))
                    bar.set_postfix(loss=f"{record['loss']:.4g}", beta=f"{record['beta']:.2f}", step=state["step"],
                                    refresh=False)
                    bar.refresh()
                    if state["step"] % validate_every == 0:
                        started = time.monotonic()
                        stop = run_validation()
                        state["elapsed_s"] += time.monotonic() - started
                        if stop:
                            state["stopped_because"] = (
                                f"early stopping: no validation gain (mAP@3 + TPR) in {config.patience} validations")
                            break
                    if time.monotonic() - last_checkpoint > config.checkpoint_every_s:
                        write_checkpoint()
                        last_checkpoint = time.monotonic()
                    if progress() >= 1.0:
                        break
                else:
                    state["epoch"] += 1
        except KeyboardInterrupt:  # Ctrl-C or `timeout -s INT`: keep what was learnt, export it
            state["stopped_because"] = "interrupted (resumable with --resume)"
        if state["stopped_because"] is None:
            state["stopped_because"] = "time budget used" if budget_s and state["elapsed_s"] >= budget_s else (
                "planned steps done")
        if not state["validations"] or state["validations"][-1]["step"] != state["step"]:
            run_validation()
        write_checkpoint()
    finally:
        bar.close()
        log.close()

    encoder = copy.deepcopy(model.encoder).cpu().float()
    if best_encoder_state is not None:
        encoder.load_state_dict(best_encoder_state)
    encoder = encoder.to(memory_format=torch.contiguous_format)
    metadata = _model_metadata(config, state, data_info, channels)
    save_encoder(encoder, run_dir / EXPORT_DIR, metadata)
    summary = {
        "run_dir": str(run_dir), "model_dir": str(run_dir / EXPORT_DIR), "metadata": metadata,
        "config": _config_json(config), "validations": state["validations"],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
