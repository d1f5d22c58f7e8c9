"""Losses: pure functions of score matrices and masks (no models, no data), unit-tested on hand values."""
