"""Pure loss functions of the reference models (MAE reconstruction, classification, NT-Xent)."""
