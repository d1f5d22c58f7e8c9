"""Evaluation: XMC metrics (:mod:`.metrics`), propensities (:mod:`.propensity`), prediction files
(:mod:`.predictions`), the dataset evaluator (:mod:`.evaluator`) and predictors (:mod:`.predictor`)."""
