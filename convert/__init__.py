"""PyTorch checkpoints <-> Flax variable trees."""
