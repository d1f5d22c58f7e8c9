"""XMC metrics on hand-computed cases, propensities, and the filter-before-cut rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from xmc.data.propensity import inverse_propensity
from xmc.evaluation.metrics import compute_metrics, rank_predictions

L2 = math.log2


def csr(rows: list[list[int]], num_labels: int) -> sp.csr_matrix:
    data = [(i, j) for i, row in enumerate(rows) for j in row]
    r, c = zip(*data) if data else ((), ())
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), num_labels))


# Three test points, six labels with inverse propensities 1..6.
#   row 0: relevant {0, 2}; scores (unsorted) rank the labels 1, 2, 3, 0, 4 -> hits at ranks 2 and 4
#   row 1: relevant {5}; label 1 is a reciprocal pair to drop, -1 is "no prediction" -> ranking 5, 3, 4
#   row 2: no relevant label -> scores 0 everywhere, adds nothing to the PSP denominators
INDICES = np.array([[0, 3, 2, 1, 4], [1, 5, 3, -1, 4], [0, 1, 2, 3, 4]])
SCORES = np.array([[0.55, 0.6, 0.9, 1.0, 0.5], [0.9, 0.8, 0.7, 0.95, 0.6], [5, 4, 3, 2, 1]], dtype=float)
TRUTH = csr([[0, 2], [5], []], 6)
INV_PROP = np.arange(1.0, 7.0)
EXCLUDE = csr([[], [1], []], 6)


def test_hand_computed_example():
    m = compute_metrics(INDICES, SCORES, TRUTH, INV_PROP, exclude=EXCLUDE)
    idcg2 = 1 + 1 / L2(3)  # two relevant labels
    row0_ndcg3 = (1 / L2(3)) / idcg2
    row0_ndcg5 = (1 / L2(3) + 1 / L2(5)) / idcg2
    row0_psdcg5 = (3 / L2(3) + 1 / L2(5)) / idcg2       # labels 2 (w=3) at rank 2, 0 (w=1) at rank 4
    row0_best_psdcg5 = (3 + 1 / L2(3)) / idcg2            # best order: w=3 first, then w=1
    expected = {
        "P@1": 100 * (0 + 1 + 0) / 3,
        "P@3": 100 * (1 / 3 + 1 / 3 + 0) / 3,
        "P@5": 100 * (2 / 5 + 1 / 5 + 0) / 3,
        "nDCG@1": 100 * (0 + 1 + 0) / 3,
        "nDCG@3": 100 * (row0_ndcg3 + 1 + 0) / 3,
        "nDCG@5": 100 * (row0_ndcg5 + 1 + 0) / 3,
        "PSP@1": 100 * (0 + 6) / (3 + 6),
        "PSP@3": 100 * (3 + 6) / (3 + 1 + 6),
        "PSP@5": 100 * (3 + 1 + 6) / (3 + 1 + 6),
        "PSnDCG@5": 100 * (row0_psdcg5 + 6) / (row0_best_psdcg5 + 6),
        "R@10": 100 * (2 / 2 + 1 / 1 + 0) / 3,
    }
    assert set(m) == set(expected)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-9), key
    # the same figures written out as numbers, so a wrong formula above cannot hide a wrong metric
    assert m["nDCG@3"] == pytest.approx(46.2284, abs=1e-4)
    assert m["nDCG@5"] == pytest.approx(55.0307, abs=1e-4)
    assert m["PSnDCG@5"] == pytest.approx(90.2548, abs=1e-4)


def test_reciprocal_pairs_matter_and_are_removed_before_the_cut():
    unfiltered = compute_metrics(INDICES, SCORES, TRUTH, INV_PROP)
    assert unfiltered["P@1"] == pytest.approx(0.0)  # row 1 ranks the reciprocal label 1 first
    # a filtered label inside the top 5 lets the 6th candidate in: it must count for P@5
    indices = np.array([[3, 0, 1, 2, 4, 5]])
    scores = np.array([[6, 5, 4, 3, 2, 1]], dtype=float)
    truth = csr([[5]], 6)
    exclude = csr([[3]], 6)
    assert compute_metrics(indices, scores, truth, INV_PROP)["P@5"] == pytest.approx(0.0)
    assert compute_metrics(indices, scores, truth, INV_PROP, exclude=exclude)["P@5"] == pytest.approx(20.0)


def test_perfect_ranking_scores_100_everywhere():
    truth = csr([[0, 2, 4], [1], [3, 5]], 6)
    inv_prop = np.array([1.0, 5.0, 2.0, 3.0, 4.0, 1.5])
    indices = np.array([[4, 2, 0, 1, 3], [1, 0, 2, 3, 4], [3, 5, 0, 1, 2]])
    scores = -np.arange(5.0)[None, :].repeat(3, axis=0)
    m = compute_metrics(indices, scores, truth, inv_prop)
    assert m["P@1"] == pytest.approx(100.0)
    for key in ("nDCG@1", "nDCG@3", "nDCG@5", "PSP@1", "PSnDCG@5", "R@10"):
        assert m[key] == pytest.approx(100.0), key
    # ordering tail labels first is what makes PSP perfect: the PS-optimal order is by weight
    assert m["PSP@3"] == pytest.approx(100.0)


def test_rank_predictions_sorts_pads_and_drops():
    ranked = rank_predictions(np.array([[2, -1, 7, 1]]), np.array([[0.1, 9.0, 0.5, 0.3]]), k=6, num_labels=5)
    # -1 and the out-of-range 7 are dropped; ties keep input order; padded with -1
    assert ranked.tolist() == [[1, 2, -1, -1, -1, -1]]


def test_recall_at_100_only_with_100_columns():
    rng = np.random.default_rng(0)
    truth = csr([[1, 2], [3]], 200)
    indices = np.stack([rng.permutation(200)[:100] for _ in range(2)])
    scores = rng.random((2, 100))
    m = compute_metrics(indices, scores, truth, np.ones(200))
    assert "R@100" in m
    assert "R@100" not in compute_metrics(indices[:, :50], scores[:, :50], truth, np.ones(200))


def test_shape_errors_are_reported():
    with pytest.raises(ValueError, match="predictions have 2 rows but the ground truth has 3"):
        compute_metrics(INDICES[:2], SCORES[:2], TRUTH, INV_PROP)
    with pytest.raises(ValueError, match="one value per label"):
        compute_metrics(INDICES, SCORES, TRUTH, INV_PROP[:5])


def test_inverse_propensity_hand_computed():
    # N = 100, A = 0.55, B = 1.5: C = (ln 100 - 1) * 2.5^0.55 = 3.605170 * 1.655278 = 5.967505
    w = inverse_propensity(np.array([0, 1, 10]), 100, a=0.55, b=1.5)
    assert w[0] == pytest.approx(1 + 5.967505 * 1.5 ** -0.55, rel=1e-6)
    # a label seen once: (1 + B)^-A cancels the (B + 1)^A in C, leaving 1 + ln N - 1 = ln N
    assert w[1] == pytest.approx(math.log(100), rel=1e-12)
    assert w.tolist() == pytest.approx([5.774661, 4.605170, 2.557432], abs=1e-6)
    # Amazon constants weight rare labels differently; frequent labels tend to 1
    amazon = inverse_propensity(np.array([0, 100000]), 294805, a=0.6, b=2.6)
    assert amazon[0] > amazon[1] > 1.0
    assert amazon[1] == pytest.approx(1.025004, abs=1e-6)


def test_chunked_rows_match_a_single_pass(monkeypatch):
    import xmc.evaluation.metrics as metrics

    rng = np.random.default_rng(1)
    n, num_labels = 300, 40
    truth = sp.random(n, num_labels, density=0.08, random_state=2, format="csr")
    truth.data[:] = 1
    exclude = sp.random(n, num_labels, density=0.03, random_state=3, format="csr")
    indices = np.stack([rng.permutation(num_labels)[:12] for _ in range(n)])
    scores = rng.normal(size=(n, 12))
    inv_prop = rng.uniform(1, 4, num_labels)
    whole = compute_metrics(indices, scores, truth, inv_prop, exclude=exclude)
    monkeypatch.setattr(metrics, "_ROW_CHUNK", 7)
    chunked = compute_metrics(indices, scores, truth, inv_prop, exclude=exclude)
    assert chunked == pytest.approx(whole)


def test_label_segments_split_by_training_positives():
    from xmc.evaluation.segments import label_segments

    # label 0 alone holds half of the 10 training positives; 1 and 5 have none
    segments = label_segments(np.array([5, 0, 3, 1, 1, 0]))
    assert {name: ids.tolist() for name, ids in segments.items()} == {
        "seen": [0, 2, 3, 4], "unseen": [1, 5], "head": [0], "tail": [2, 3, 4]}


def test_a_segment_is_scored_against_its_own_positives_on_its_own_points():
    from xmc.evaluation.segments import segment_metrics

    # point 0: positives {0, 1}, predicted [0, 1]; point 1: {2}, predicted [1, 2]; point 2: {1}, [2, 1]
    truth = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 1], [0, 1, 0]], dtype=np.float32))
    indices = np.array([[0, 1], [1, 2], [2, 1]])
    scores = np.array([[2.0, 1.0], [2.0, 1.0], [2.0, 1.0]])
    out = segment_metrics(indices, scores, truth, np.ones(3), {"a": np.array([1]), "b": np.array([0, 2])})
    # segment a (label 1): points 0 and 2; top-1 is 0 (a miss here: not in the segment) and 2 (a miss)
    assert out["a"]["points"] == 2 and out["a"]["P@1"] == 0.0 and out["a"]["R@10"] == 100.0
    # segment b (labels 0, 2): points 0 and 1; top-1 hits for point 0, misses (label 1) for point 1
    assert out["b"]["points"] == 2 and out["b"]["P@1"] == 50.0 and out["b"]["labels"] == 2
    assert out["a"]["positives_share"] == 50.0 and out["b"]["positives_share"] == 50.0
