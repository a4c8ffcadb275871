"""jaxecg: self-supervised ECG (MAE ViT) and cardiac-MRI (SimCLR ResNet) models in JAX/Flax."""

__version__ = "0.1.0"
