"""Pure loss functions of the reference models (MAE reconstruction, classification, NT-Xent)."""

from jaxecg.losses.classification import binary_cross_entropy_with_logits, cross_entropy
from jaxecg.losses.contrastive import nt_xent
from jaxecg.losses.reconstruction import MAELoss, mae_loss, ncc, norm_pix_target, zero_normalize

__all__ = [
    "MAELoss",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "mae_loss",
    "ncc",
    "norm_pix_target",
    "nt_xent",
    "zero_normalize",
]
