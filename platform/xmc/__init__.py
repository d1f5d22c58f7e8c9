"""xmc: extreme multi-label classification with dual encoders and per-label classifiers on Ray.

    from xmc import Predictor
    predictor = Predictor.from_bundle("bundles/demo")
    predictor.predict(["how do I keep pasta from sticking"], k=5)

The public names are loaded on first use: importing ``xmc.data`` (preparing data) must not import torch.
"""

__version__ = "0.1.0"

__all__ = ["Prediction", "Predictor"]


def __getattr__(name: str):
    if name in __all__:
        from xmc.index import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'xmc' has no attribute {name!r}")
