"""jaxecg: self-supervised ECG (MAE ViT) and cardiac-MRI (SimCLR ResNet) models in JAX/Flax.

The entry points are listed in ``__all__``: the encoder functions, and the subpackages
for models, losses, data, training and figures. Everything is resolved on first use
(PEP 562), so ``import jaxecg`` and ``jaxecg --help`` stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"  # the one place; pyproject.toml reads it

__all__ = [
    "Encoder",
    "data",
    "embed",
    "encoders",
    "errors",
    "load_encoder",
    "load_model",
    "losses",
    "models",
    "probe",
    "train",
    "viz",
]
# Where each function lives; every other name of __all__ is a subpackage.
_FUNCTIONS = {name: "jaxecg.encoders" for name in ("Encoder", "load_encoder", "load_model")}


def __getattr__(name: str) -> Any:
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    if name in __all__:
        return importlib.import_module(f"jaxecg.{name}")
    raise AttributeError(f"module 'jaxecg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
