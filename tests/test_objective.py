"""A step's objective composed from the configured criteria: the documented combination, hand-assembled."""

from __future__ import annotations

import math

import pytest
import torch

from xmc.losses.config import LossConfig
from xmc.losses.multilabel import decoupled_softmax, supcon
from xmc.losses.objective import step_loss
from xmc.losses.triplet import dynamic_margin_triplet, prototype_regularizer

SCALE = 10.0


def cosines(seed: int, shape=(6, 9)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) * 2 - 1).requires_grad_()


TARGETS = torch.zeros(6, 9, dtype=torch.bool)
TARGETS[torch.arange(6), torch.tensor([0, 1, 2, 0, 4, 8])] = True
TARGETS[0, 3] = True
ROW_MASK = torch.tensor([True, True, True, False, True, True])


def test_dual_encoder_and_classifier_mix_by_lambda():
    text, clf = cosines(0), cosines(1)
    config = LossConfig(de="supcon", clf="decoupled", lambda_de=0.3)
    loss = step_loss(text, TARGETS, ROW_MASK, config, SCALE, clf=clf)
    expected = (0.3 * supcon(SCALE * text, TARGETS, ROW_MASK)
                + 0.7 * decoupled_softmax(SCALE * clf, TARGETS, ROW_MASK))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert text.grad.abs().sum() > 0 and clf.grad.abs().sum() > 0
    assert text.grad[3].abs().sum() == 0  # a masked query contributes nothing
    # without a classifier the objective is the DE side alone (no λ)
    alone = step_loss(text, TARGETS, ROW_MASK, config, SCALE)
    assert alone.item() == pytest.approx(supcon(SCALE * text, TARGETS, ROW_MASK).item(), rel=1e-6)


def test_dual_term_scores_the_transposed_matrix():
    text = cosines(2)
    config = LossConfig(de="supcon", dual_weight=0.5)
    loss = step_loss(text, TARGETS, None, config, SCALE)
    columns_with_a_query = TARGETS.any(dim=0)
    expected = supcon(SCALE * text, TARGETS) + 0.5 * supcon(SCALE * text.T, TARGETS.T, columns_with_a_query)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert math.isfinite(loss.item())


def test_prime_prototype_terms_draw_the_same_positives_as_the_criteria_alone():
    text, proto = cosines(3), cosines(4)
    config = LossConfig(de="triplet", inter_weight=0.5, reg_weight=0.2, triplet_negatives=3)
    margins = config.margins()

    def generator():
        return torch.Generator().manual_seed(7)

    loss = step_loss(text, TARGETS, ROW_MASK, config, SCALE, proto=proto, generator=generator())
    # the same draws in the same order: prototype triplet, text triplet, then the regulariser
    draws = generator()
    triplet = dict(row_mask=ROW_MASK, num_negatives=3, margin_min=margins[0], margin_max=margins[1],
                   tau=config.triplet_tau, generator=draws)
    expected = dynamic_margin_triplet(proto, TARGETS, **triplet)
    expected = expected + 0.5 * dynamic_margin_triplet(text, TARGETS, **triplet)
    expected = expected + 0.2 * prototype_regularizer(text, proto, TARGETS, ROW_MASK, 3, config.reg_margin,
                                                      draws)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert proto.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
