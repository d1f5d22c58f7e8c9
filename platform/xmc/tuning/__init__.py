"""Tuning: Ray Tune sweeps over any training key, scored on a validation split, best config retrained."""
