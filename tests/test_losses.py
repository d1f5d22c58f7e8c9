"""Loss cores on hand-computed values, and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from xmc.losses.multilabel import balanced_supcon, decoupled_softmax, supcon

# One query, three pool labels: logits (2, 1, 0); labels 0 and 1 are positives.
LOGITS = torch.tensor([[2.0, 1.0, 0.0]])
TARGETS = torch.tensor([[True, True, False]])
E = math.e


def test_supcon_hand_computed():
    # -1/2 [ (2 - log(e^2 + e + 1)) + (1 - log(e^2 + e + 1)) ]
    lse = math.log(E**2 + E + 1)
    assert supcon(LOGITS, TARGETS).item() == pytest.approx(-0.5 * ((2 - lse) + (1 - lse)), rel=1e-6)
    assert supcon(LOGITS, TARGETS).item() == pytest.approx(0.9076059644, rel=1e-6)


def test_decoupled_softmax_hand_computed():
    # each positive against the negatives only: -1/2 [ log(e^2/(e^2+1)) + log(e/(e+1)) ]
    expected = -0.5 * (math.log(E**2 / (E**2 + 1)) + math.log(E / (E + 1)))
    assert decoupled_softmax(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)
    assert decoupled_softmax(LOGITS, TARGETS).item() == pytest.approx(0.2200948352, rel=1e-6)


def test_balanced_supcon_hand_computed():
    # positives weighted 1/2 in the denominator: D = e^2/2 + e/2 + 1
    log_d = math.log(E**2 / 2 + E / 2 + 1)
    expected = -0.5 * ((2 - log_d) + (1 - log_d))
    assert balanced_supcon(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)


def test_single_positive_all_three_agree_with_cross_entropy():
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.5], [1.0, 0.0, -1.0, 3.0]])
    targets = torch.zeros(2, 4, dtype=torch.bool)
    targets[0, 2] = targets[1, 0] = True
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([2, 0]))
    for loss in (supcon, decoupled_softmax, balanced_supcon):
        assert loss(logits, targets).item() == pytest.approx(ce.item(), rel=1e-6), loss.__name__


def test_masked_rows_and_rows_without_positives_do_not_count():
    logits = torch.tensor([[2.0, 1.0, 0.0], [5.0, -5.0, 0.0], [0.1, 0.2, 0.3]])
    targets = torch.tensor([[True, True, False], [False, True, False], [False, False, False]])
    mask = torch.tensor([True, False, True])  # row 1 masked out, row 2 has no positive
    for loss in (supcon, decoupled_softmax, balanced_supcon):
        assert loss(logits, targets, mask).item() == pytest.approx(loss(LOGITS, TARGETS).item(), rel=1e-6)
    assert supcon(logits, torch.zeros_like(targets)).item() == 0.0


def test_decoupled_scores_each_positive_against_the_negatives_only():
    """Decoupled softmax = the mean of one cross-entropy per positive, with the other positives removed;
    supcon keeps them in the denominator, so raising one positive's score hurts the other's term."""
    logits = torch.tensor([[1.5, 0.2, -0.3, 0.9, 2.2]])
    targets = torch.tensor([[True, False, False, True, False]])
    ce = torch.nn.functional.cross_entropy
    without_3 = logits[:, [0, 1, 2, 4]]
    without_0 = logits[:, [1, 2, 3, 4]]
    expected = 0.5 * (ce(without_3, torch.tensor([0])) + ce(without_0, torch.tensor([2])))
    assert decoupled_softmax(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    raised = logits.clone()
    raised[0, 3] = 5.0
    first_only = torch.tensor([[True, False, False, False, False]])
    assert supcon(raised, first_only).item() > supcon(logits, first_only).item()


def test_gradients_flow_and_losses_are_float32_safe_in_bf16():
    logits = (torch.randn(4, 50) * 20).to(torch.bfloat16).requires_grad_()
    targets = torch.rand(4, 50) < 0.1
    targets[:, 0] = True
    for loss in (supcon, decoupled_softmax, balanced_supcon):
        value = loss(logits, targets)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(grad.float()).all()
