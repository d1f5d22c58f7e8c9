"""Evaluation: XMC metrics (:mod:`.metrics`), prediction files (:mod:`.predictions`), top-k retrieval and
the zero-shot baseline (:mod:`.retrieval`), the dataset evaluator (:mod:`.evaluator`) and the choice of
the fused-score settings on a validation hold-out (:mod:`.calibration`)."""
