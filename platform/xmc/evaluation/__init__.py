"""Evaluation: XMC metrics, propensities, prediction files and the evaluator used by jobs and training."""

from xmc.evaluation.evaluator import evaluate_predictions
from xmc.evaluation.metrics import REPORTED_METRICS, compute_metrics
from xmc.evaluation.propensity import inverse_propensity

__all__ = ["REPORTED_METRICS", "compute_metrics", "evaluate_predictions", "inverse_propensity"]
