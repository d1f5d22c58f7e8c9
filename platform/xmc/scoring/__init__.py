"""The trained model for inference: what evaluation, calibration, export and the query tower share.

:class:`~xmc.scoring.model.ScoringModel` holds the encoder, both heads, the classifier table (or this
worker's shard), PRIME's prototypes, the labels without training positives and the fused-score settings;
:mod:`xmc.scoring.fusion` is the score's maths; :class:`~xmc.scoring.run.TrainedRun` opens a run's
checkpoint for inference without any training state.
"""
