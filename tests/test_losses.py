"""The loss terms on hand-made cases whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from fingerprint.model.losses import (
    barlow_twins_loss,
    beta_at,
    branch_beta,
    deepbrainprint_loss,
    semi_hard_pairs,
    supervised_nt_xent,
)

torch.set_num_threads(1)


def test_barlow_twins_low_for_identical_decorrelated_views_high_for_unrelated() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(512, 16, generator=g)
    same = barlow_twins_loss(z, z)
    unrelated = barlow_twins_loss(z, torch.randn(512, 16, generator=g))
    # identical views: diagonal exactly 1, only the (small) chance off-diagonal correlations remain
    assert same < 0.01
    # unrelated views: diagonal ~0, so the on-diagonal term alone is ~D
    assert unrelated > 14


def test_barlow_twins_penalises_redundant_dimensions() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(256, 1, generator=g)
    redundant = base.repeat(1, 8) + 0.01 * torch.randn(256, 8, generator=g)
    independent = torch.randn(256, 8, generator=g)
    assert barlow_twins_loss(redundant, redundant) > 100 * barlow_twins_loss(independent, independent)


def test_semi_hard_mining_picks_easiest_positive_and_hardest_less_similar_negative() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    sim = torch.full((6, 6), -1.0)
    sim[0, 1], sim[0, 2] = 0.9, 0.5  # easiest positive of 0 is 1 (0.9)
    sim[0, 3], sim[0, 4], sim[0, 5] = 0.95, 0.7, 0.2  # 3 is harder than the positive: not semi-hard; 4 is
    sim = torch.maximum(sim, sim.T)
    anchors, positives, negatives = semi_hard_pairs(sim, labels)
    row = (anchors == 0).nonzero().item()
    assert positives[row].item() == 1 and negatives[row].item() == 4
    assert 5 not in anchors.tolist()  # a label seen once has no positive


def test_nt_xent_prefers_embeddings_that_group_patients() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(4, 32, generator=g)
    grouped = centres[labels] + 0.05 * torch.randn(8, 32, generator=g)
    shuffled = centres[torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])] + 0.05 * torch.randn(8, 32, generator=g)
    assert supervised_nt_xent(grouped, labels) < supervised_nt_xent(shuffled, labels)


def test_nt_xent_value_for_one_pair() -> None:
    # anchor 0: positive at cos 1, negative at cos 0 -> loss = log(1 + exp(-1/T))
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    expected = math.log(1 + math.exp(-1 / 0.07))
    assert supervised_nt_xent(emb, labels).item() == pytest.approx(expected, abs=1e-6)


def test_nt_xent_without_positives_is_zero_but_differentiable() -> None:
    emb = torch.randn(4, 8, requires_grad=True)
    loss = supervised_nt_xent(emb, torch.arange(4))
    loss.backward()
    assert loss.item() == 0.0 and emb.grad is not None


def test_beta_schedules_and_branches() -> None:
    assert beta_at(0.0) == 1.0 and beta_at(0.25) == 0.75 and beta_at(1.0) == 0.0
    assert beta_at(0.9, "constant") == 0.5
    assert beta_at(0.49, "step") == 1.0 and beta_at(0.51, "step") == 0.0
    assert branch_beta(0.3, "ssl") == 1.0 and branch_beta(0.3, "supervised") == 0.0 and branch_beta(0.3, "both") == 0.3
    with pytest.raises(ValueError):
        beta_at(0.5, "cosine")


def test_combined_loss_weights_its_terms() -> None:
    g = torch.Generator().manual_seed(3)
    p1, p2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    labels = torch.arange(8).repeat(2)
    only_bt, parts_bt = deepbrainprint_loss(p1, p2, labels, beta=1.0)
    only_nce, parts_nce = deepbrainprint_loss(p1, p2, labels, beta=0.0, nce_weight=10.0)
    mixed, _ = deepbrainprint_loss(p1, p2, labels, beta=0.5, nce_weight=10.0)
    assert "nce" not in parts_bt and "bt" not in parts_nce
    assert only_bt.item() == pytest.approx(parts_bt["bt"], rel=1e-6)
    assert only_nce.item() == pytest.approx(10.0 * parts_nce["nce"], rel=1e-6)
    assert mixed.item() == pytest.approx(0.5 * only_bt.item() + 0.5 * only_nce.item(), rel=1e-5)
