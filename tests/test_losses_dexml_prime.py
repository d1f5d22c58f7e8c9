"""DEXML's soft top-k and sampled-positive decoupled softmax, PRIME's triplet loss and regulariser:
hand-computed values, gradcheck, and the recipes' configs."""

from __future__ import annotations

import math

import pytest
import torch

from xmc.config import load_config
from xmc.experiment import ExperimentConfig
from xmc.losses.config import LossConfig
from xmc.losses.criteria import keep_one_positive, make_criterion
from xmc.losses.topk import SoftTopK, soft_topk, soft_topk_loss
from xmc.losses.triplet import dynamic_margin_triplet, prototype_regularizer

from conftest import REPO


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_soft_topk_two_labels_hand_computed():
    # s = (1, -1), K = 1, α = 2: by symmetry t = 0, so π = (σ(2), σ(-2))
    pi = soft_topk(torch.tensor([[1.0, -1.0]], dtype=torch.float64), 1, alpha=2.0)
    assert pi[0, 0].item() == pytest.approx(sigmoid(2.0), abs=1e-9)
    assert pi[0, 1].item() == pytest.approx(sigmoid(-2.0), abs=1e-9)
    loss = soft_topk_loss(torch.tensor([[1.0, -1.0]]), torch.tensor([[True, False]]), k=1, alpha=2.0)
    assert loss.item() == pytest.approx(-math.log(sigmoid(2.0)), rel=1e-5)  # 0.126928


def test_soft_topk_memberships_sum_to_k_and_keep_the_order():
    logits = torch.randn(4, 30, dtype=torch.float64) * 3
    pi = soft_topk(logits, 5, alpha=2.0)
    assert torch.allclose(pi.sum(dim=1), torch.full((4,), 5.0, dtype=torch.float64), atol=1e-6)
    order = logits.argsort(dim=1)
    assert (pi.gather(1, order).diff(dim=1) >= -1e-12).all()


def test_soft_topk_gradcheck():
    logits = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    k = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: SoftTopK.apply(x, k, 1.5, 100), (logits,), eps=1e-6, atol=1e-6)


def test_soft_topk_with_fewer_positives_than_k():
    """K = 5 and only 2 positives: both are used, nothing fails, the loss is their mean -log π."""
    logits = torch.tensor([[3.0, 2.0, 0.5, 0.1, -1.0, -2.0, 0.0, 1.0, -0.5, 0.2]])
    targets = torch.zeros(1, 10, dtype=torch.bool)
    targets[0, [0, 4]] = True
    loss = soft_topk_loss(logits, targets, k=5, alpha=2.0)
    pi = soft_topk(logits.double(), 5, alpha=2.0)
    assert loss.item() == pytest.approx(-(pi[0, 0].log() + pi[0, 4].log()).item() / 2, rel=1e-4)
    # a pool smaller than K is still a valid row (K drops to n_valid - 1)
    small = soft_topk_loss(torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[True, False, False]]), k=5)
    assert torch.isfinite(small) and small.item() > 0


def test_one_sampled_positive_masks_the_others():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    targets = torch.tensor([[True, True, False, False]])
    masked, chosen = keep_one_positive(logits, targets, torch.Generator().manual_seed(0))
    assert chosen.sum() == 1 and (chosen & targets).sum() == 1
    other = int((targets & ~chosen).nonzero()[0, 1])
    assert masked[0, other] == float("-inf")
    criterion = make_criterion("decoupled", LossConfig(positives_per_step="one"), scale=1.0,
                               generator=torch.Generator().manual_seed(0))
    kept = int(chosen.nonzero()[0, 1])
    expected = torch.nn.functional.cross_entropy(logits[:, [kept, 2, 3]], torch.tensor([0]))
    assert criterion(logits, targets, None).item() == pytest.approx(expected.item(), rel=1e-6)


def test_triplet_hand_computed():
    scores = torch.tensor([[0.5, 0.6, 0.2, 0.45]])
    targets = torch.tensor([[True, False, False, False]])
    positive = torch.tensor([0])
    # top-2 negatives 0.6 and 0.45; margins clamp(|0.5 - s_n|, 0.1, 0.3) = 0.1 and 0.1
    plain = dynamic_margin_triplet(scores, targets, num_negatives=2, tau=1.0, positive=positive)
    assert plain.item() == pytest.approx((0.6 - 0.5 + 0.1) + (0.45 - 0.5 + 0.1), abs=1e-6)  # 0.25
    weighted = dynamic_margin_triplet(scores, targets, num_negatives=2, tau=0.1, positive=positive)
    w = math.exp(6.0) / (math.exp(6.0) + math.exp(4.5))
    assert weighted.item() == pytest.approx(0.2 * w + 0.05 * (1 - w), abs=1e-6)  # 0.1726
    # a violation of 0.4 costs 0.4 + the capped margin 0.3
    big = dynamic_margin_triplet(torch.tensor([[0.5, 0.9]]), torch.tensor([[True, False]]), num_negatives=1,
                                 tau=1.0, positive=positive)
    assert big.item() == pytest.approx(0.7, abs=1e-6)
    fixed = dynamic_margin_triplet(scores, targets, num_negatives=2, tau=1.0, margin_min=0.2, margin_max=0.2,
                                   positive=positive)
    assert fixed.item() == pytest.approx(0.3 + 0.15, abs=1e-6)


def test_triplet_gradcheck():
    """The margin carries no gradient by design, so gradcheck runs where it is constant: a fixed margin, or
    a dynamic margin saturated at m_max (violations larger than 0.3)."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.zeros(4, 9, dtype=torch.bool)
    positive = torch.tensor([0, 3, 5, 8])
    targets[torch.arange(4), positive] = True
    random_scores = (torch.rand(4, 9, generator=generator, dtype=torch.float64) * 2 - 1).requires_grad_()
    violated = torch.rand(4, 9, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    violated[torch.arange(4), positive] = -0.5  # every negative beats its positive by more than 0.3
    violated.requires_grad_()
    for tau in (1.0, 0.1):
        def fixed(s):
            return dynamic_margin_triplet(s, targets, num_negatives=3, margin_min=0.2, margin_max=0.2,
                                          tau=tau, positive=positive)

        def dynamic(s):
            return dynamic_margin_triplet(s, targets, num_negatives=3, tau=tau, positive=positive)

        assert torch.autograd.gradcheck(fixed, (random_scores,), eps=1e-7, atol=1e-5)
        assert torch.autograd.gradcheck(dynamic, (violated,), eps=1e-7, atol=1e-5)


def test_regularizer_hand_computed():
    text = torch.tensor([[0.5, 0.3, 0.1]])
    proto = torch.tensor([[0.4, 0.35, 0.0]])
    targets = torch.tensor([[True, False, False]])
    # positive: max(0, 0.5 - 0.4 + 0.1) = 0.2; negatives by prototype score: 0.15 and 0 -> mean of
    # nonzero 0.15
    value = prototype_regularizer(text, proto, targets, num_negatives=2, margin=0.1)
    assert value.item() == pytest.approx(0.5 * (0.2 + 0.15), abs=1e-6)


@pytest.mark.parametrize("method", ["unidec", "dexml", "prime"])
@pytest.mark.parametrize("dataset", ["cooking-stackexchange", "reuters-21578", "wordnet-reverse-dictionary"])
def test_every_recipe_combines_with_every_dataset(method, dataset):
    config = load_config(ExperimentConfig, [REPO / "configs" / "datasets" / f"{dataset}.yaml",
                                            REPO / "configs" / "methods" / f"{method}.yaml"])
    assert config.dataset.name == dataset
    assert config.model.prototypes == (method == "prime")
    assert config.model.classifier == (method == "unidec")
    assert config.pool.all_labels == (method == "dexml")
