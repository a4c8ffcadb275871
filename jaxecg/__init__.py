"""jaxecg: self-supervised ECG (MAE ViT) and cardiac-MRI (SimCLR ResNet) models in JAX/Flax."""

__version__ = "0.1.0"

# Public names resolved on first use (PEP 562), so `import jaxecg` and `jaxecg --help` stay light.
_LAZY = {"Encoder": "jaxecg.encoders", "load_encoder": "jaxecg.encoders"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxecg' has no attribute {name!r}")
