"""The multi-level input of the richer-input experiment (bench/experiment_richer_input.py, issue 13 part 3).

What must hold for the experiment to be like for like, and for the shipped single-slice path to stay as it is: the
canonical channel of a level stack is the shipped slice bit for bit (fast path and real pipeline), the 3-channel
start reproduces the 1-channel encoder on a stack of identical slices, and a multi-level cohort goes through the
training pieces (augmentation, embedding, weight files) with the same draws for every channel.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from fingerprint.cohort.training_set import fast_levels, fast_slice, write_slice_cohort
from fingerprint.cohort.visits import plan_subjects, plan_visits
from fingerprint.imaging.slicing import LEVEL_OFFSETS_MM, canonical_mask, level_mm
from fingerprint.model.augment import AugmentConfig, augment_batch, slicer_region
from fingerprint.model.encoder import load_encoder, save_encoder, seeded_encoder, spread_input_channels
from fingerprint.model.fingerprinter import embed_batches

CANONICAL = LEVEL_OFFSETS_MM.index(0.0)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    torch.set_num_threads(1)


def mni_subject():
    """A training subject warped from the MNI152 head (prepared in a second from nilearn's template)."""
    return next(p for p in plan_subjects("train", 5, 0) if p.base_head == "mni152")


def test_fast_level_stack_holds_the_shipped_slice_bit_for_bit_and_other_levels_of_their_own(tmp_path) -> None:
    subject = mni_subject()
    anatomy, visit = subject.anatomy(), plan_visits(subject, 1)[0]
    stack = fast_levels(anatomy, visit, LEVEL_OFFSETS_MM)
    assert stack.shape == (len(LEVEL_OFFSETS_MM), 128, 128) and stack.dtype == np.float32
    assert np.array_equal(stack[CANONICAL], fast_slice(anatomy, visit))
    for k, offset in enumerate(LEVEL_OFFSETS_MM):
        mask = canonical_mask(level_mm(offset))
        assert np.all(stack[k][~mask] == 0) and stack[k][mask].std() > 0.1
    assert not np.array_equal(stack[0], stack[-1])
    # The cohort writer: (N, L, 128, 128), its canonical channel the single-slice cohort's slices.
    write_slice_cohort(tmp_path / "single", [subject], visits=2)
    write_slice_cohort(tmp_path / "levels", [subject], visits=2, offsets_mm=LEVEL_OFFSETS_MM)
    single, levels = (np.load(tmp_path / name / "slices.npz") for name in ("single", "levels"))
    assert levels["slices"].shape == (2, len(LEVEL_OFFSETS_MM), 128, 128)
    assert np.array_equal(levels["slices"][:, CANONICAL], single["slices"])
    assert list(levels["scan_id"]) == list(single["scan_id"])


def test_real_pipeline_levels_hold_the_canonical_slice_bit_for_bit() -> None:
    from fingerprint.cohort.benchmark import scan_volume
    from fingerprint.imaging.pipeline import canonical_levels, slice_volume

    subject = next(p for p in plan_subjects("calibration", 5, 1) if p.base_head == "mni152")
    image = scan_volume(subject.anatomy(), plan_visits(subject, 1)[0])
    stack, coverage = canonical_levels(image)
    assert stack.shape == (len(LEVEL_OFFSETS_MM), 128, 128) and len(coverage) == len(LEVEL_OFFSETS_MM)
    assert np.array_equal(stack[CANONICAL], slice_volume(image)[0])


@pytest.mark.quick
def test_spread_encoder_on_identical_levels_is_the_one_channel_encoder(tmp_path) -> None:
    encoder = seeded_encoder().eval()
    widened = spread_input_channels(encoder, 3).eval()
    assert widened.conv1.weight.shape[1] == 3 and encoder.conv1.weight.shape[1] == 1
    slices = np.random.default_rng(0).random((2, 128, 128), dtype=np.float32)
    stacked = np.repeat(slices[:, None], 3, axis=1)
    one = embed_batches(encoder, slices, batch_size=2)
    three = embed_batches(widened, stacked, batch_size=2)
    np.testing.assert_allclose(three, one, atol=1e-5)
    # A 3-channel encoder goes through the weight files as a 1-channel one does.
    reloaded, _ = load_encoder(save_encoder(widened, tmp_path / "w", {"model_version": "levels-test"}))
    assert reloaded.conv1.weight.shape[1] == 3
    np.testing.assert_allclose(embed_batches(reloaded.eval(), stacked, batch_size=2), three, atol=2e-3)


@pytest.mark.quick
def test_augmentation_draws_once_per_scan_for_every_level() -> None:
    rng = np.random.default_rng(1)
    slice_ = np.where(rng.random((128, 128)) > 0.3, rng.random((128, 128)), 0.0).astype(np.float32)
    stack = torch.from_numpy(np.repeat(slice_[None, None], 3, axis=1).repeat(4, axis=0))
    config = AugmentConfig(p_negative=0.5, p_shift=0.5, p_bias=0.5, p_patches=1.0, p_elastic=0.5)
    region = slicer_region(stack.numpy())
    assert region.shape == (128, 128)
    view = augment_batch(stack, config, torch.Generator().manual_seed(0), region)
    assert view.shape == stack.shape
    assert torch.equal(view[:, 0], view[:, 1]) and torch.equal(view[:, 0], view[:, 2])
    single = augment_batch(stack[:, :1], config, torch.Generator().manual_seed(0), region)
    assert torch.equal(single[:, 0], view[:, 0])  # the same draws as a single slice gets
