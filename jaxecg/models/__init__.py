"""Flax Linen models whose parameter trees mirror the PyTorch reference's module tree."""
