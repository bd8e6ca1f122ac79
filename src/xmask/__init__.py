"""xmask: crowd counts, head points and one instance mask per person from head-point labels.

Implements "Exclusivity-Guided Mask Learning for Semi-Supervised Crowd Instance Segmentation
and Counting" (XMask). Importing the package has no side effects and does not import torch:
the API below loads on first use.

- :class:`Predictor` (``Predictor.load()``: the shipped model, a name, a model folder or a
  training run; ``predictor(image)`` → :class:`Prediction`);
- :class:`Prediction`: count, points, scores, label map, overlay, COCO;
- :func:`load_model`: a model argument loaded for inference (an ``InferenceModel``);
- :func:`registered_models`: the models found by name.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

DISTRIBUTION = "xmask-crowd"
"""The name xmask is installed under (``pip install xmask-crowd``; ``xmask`` on PyPI is another
project). The import name and the command stay ``xmask``."""

__all__ = [
    "DISTRIBUTION",
    "Prediction",
    "Predictor",
    "__version__",
    "load_model",
    "registered_models",
]


def __getattr__(name: str) -> Any:
    """The public API, imported on first access (PEP 562), so ``import xmask`` stays light."""
    if name not in ("Predictor", "Prediction", "load_model", "registered_models"):
        raise AttributeError(f"module 'xmask' has no attribute {name!r}")
    from xmask.inference import loading, model_folder, prediction, predictor

    api = {
        "Predictor": predictor.Predictor,
        "Prediction": prediction.Prediction,
        "load_model": loading.load_inference_model,
        "registered_models": model_folder.registered_models,
    }
    globals().update(api)
    return api[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
