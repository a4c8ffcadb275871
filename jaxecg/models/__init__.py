"""Flax Linen models whose parameter trees mirror the PyTorch reference's module tree."""

from jaxecg.models.batchnorm import BatchNorm
from jaxecg.models.cmr_classifier import (
    CMRClassifier,
    CMRClassifierConfig,
    MLPHead,
    cmr_classifier_loss,
)
from jaxecg.models.ecg_classifier import ECGClassifier, ECGClassifierConfig
from jaxecg.models.heads import LinearClassifier, SimCLRProjectionHead, torch_dense
from jaxecg.models.mae import MAE, MAEConfig, MAEOutput, patchify, unpatchify
from jaxecg.models.masking import blockwise_masking, masking_noise, random_masking
from jaxecg.models.pos_embed import get_2d_sincos_pos_embed, interpolate_pos_embed
from jaxecg.models.resnet import CMREncoder, ResNetConfig, nchw_to_nhwc
from jaxecg.models.simclr import SimCLR, SimCLRConfig
from jaxecg.models.vit import (
    Attention,
    Block,
    ECGEncoder,
    Mlp,
    PatchEmbed,
    ViTConfig,
    softmax_attention,
)

__all__ = [
    "MAE",
    "Attention",
    "BatchNorm",
    "Block",
    "CMRClassifier",
    "CMRClassifierConfig",
    "CMREncoder",
    "ECGClassifier",
    "ECGClassifierConfig",
    "ECGEncoder",
    "LinearClassifier",
    "MAEConfig",
    "MAEOutput",
    "MLPHead",
    "Mlp",
    "PatchEmbed",
    "ResNetConfig",
    "SimCLR",
    "SimCLRConfig",
    "SimCLRProjectionHead",
    "ViTConfig",
    "blockwise_masking",
    "cmr_classifier_loss",
    "get_2d_sincos_pos_embed",
    "interpolate_pos_embed",
    "masking_noise",
    "nchw_to_nhwc",
    "patchify",
    "random_masking",
    "softmax_attention",
    "torch_dense",
    "unpatchify",
]
