"""xmc: extreme multi-label classification with dual encoders and per-label classifiers on Ray."""

__version__ = "0.1.0"
