"""Compact PyTorch re-implementation of the reference models, for side-by-side benchmarks.

Architectures as docs/reference.md states them (timm 0.6 ViT blocks with a fused ``qkv``, exact
GELU, LayerNorm eps 1e-6; the MAE with masking from given noise, its decoder and loss;
torchvision ResNet18/50 without ``fc``; lightly's SimCLR head and NT-Xent). Module names
are the reference's, so ``convert.export(variables, kind, config)`` of a Flax model loads
with ``load_state_dict(strict=True)`` and both frameworks run the SAME weights.
Layouts are the reference's: ECG ``(B, 1, 12, T)``, images NCHW.

Imports torch only (no JAX), so a benchmark process running it measures torch alone.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

AttentionImpl = Literal["explicit", "sdpa"]
LN_EPS = 1e-6


class Attention(nn.Module):
    """timm ``Attention``: fused ``qkv`` Linear, ``(B, N, 3, heads, hd)`` split, ``proj``.

    ``impl="explicit"`` is the reference's timm 0.6 code (``softmax(q @ k^T * scale) @ v``,
    materialising ``(B, heads, N, N)``); ``"sdpa"`` is newer timm's fused
    ``F.scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, impl: AttentionImpl) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.impl = impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """timm ``Mlp``: ``fc1 -> GELU (exact erf) -> fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, impl: AttentionImpl
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias, impl)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = patch; ``(B, C, H, W) -> (B, N, D)`` row-major tokens."""

    def __init__(self, in_chans: int, dim: int, patch: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def _blocks(
    depth: int, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, impl: AttentionImpl
) -> nn.ModuleList:
    return nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias, impl) for _ in range(depth))


class ECGEncoder(nn.Module):
    """The reference ``forward_features`` with ``global_pool="attention_pool"``: ``(B, D)``.

    ``(B, 1, 12, T)`` -> patch tokens + cls, learned ``pos_embed``, blocks; the mean patch
    token queries the patch tokens through ``nn.MultiheadAttention``; then ``fc_norm``.
    """

    def __init__(
        self,
        img_size: tuple[int, int, int],
        patch_size: tuple[int, int],
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        impl: AttentionImpl = "explicit",
    ) -> None:
        super().__init__()
        chans, leads, time = img_size
        num_patches = (leads // patch_size[0]) * (time // patch_size[1])
        self.patch_embed = PatchEmbed(chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        self.blocks = _blocks(depth, embed_dim, num_heads, mlp_ratio, qkv_bias, impl)
        self.attention_pool = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        patches = x[:, 1:]
        pooled, _ = self.attention_pool(patches.mean(dim=1, keepdim=True), patches, patches)
        return self.fc_norm(pooled.squeeze(1))


def patchify(imgs: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """``(B, C, H, W) -> (B, h*w, p*q*C)`` as the reference."""
    batch, chans, height, width = imgs.shape
    p, q = patch
    h, w = height // p, width // q
    x = torch.einsum("nchpwq->nhwpqc", imgs.reshape(batch, chans, h, p, w, q))
    return x.reshape(batch, h * w, p * q * chans)


def unpatchify(x: torch.Tensor, patch: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, h*w, p*q*C) -> (B, C, h*p, w*q)``."""
    (p, q), (h, w) = patch, grid
    chans = x.shape[2] // (p * q)
    x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, w, p, q, chans))
    return x.reshape(x.shape[0], chans, h * p, w * q)


def _zero_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var_unbiased + eps)`` over the last axis (torch ``var`` is n-1)."""
    return (x - x.mean(dim=-1, keepdim=True)) / torch.sqrt(x.var(dim=-1, keepdim=True) + eps)


class MAE(nn.Module):
    """The reference ``MaskedAutoencoderViT``: ``forward(imgs, noise) -> (loss, pred, mask)``.

    ``pos_embed``/``decoder_pos_embed`` are frozen Parameters (the reference's fixed sin-cos
    tables; their values come from the loaded state dict). ``noise (B, N)`` drives the
    per-sample masking instead of the reference's internal ``torch.rand``.
    """

    def __init__(
        self,
        img_size: tuple[int, int, int],
        patch_size: tuple[int, int],
        embed_dim: int,
        depth: int,
        num_heads: int,
        decoder_embed_dim: int,
        decoder_depth: int,
        decoder_num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        mask_ratio: float = 0.8,
        ncc_weight: float = 0.1,
        impl: AttentionImpl = "explicit",
    ) -> None:
        super().__init__()
        chans, leads, time = img_size
        self.patch = patch_size
        self.grid = (leads // patch_size[0], time // patch_size[1])
        num_patches = self.grid[0] * self.grid[1]
        self.mask_ratio, self.ncc_weight = mask_ratio, ncc_weight
        self.patch_embed = PatchEmbed(chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, 1 + num_patches, embed_dim), requires_grad=False
        )
        self.blocks = _blocks(depth, embed_dim, num_heads, mlp_ratio, qkv_bias, impl)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, 1 + num_patches, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = _blocks(
            decoder_depth, decoder_embed_dim, decoder_num_heads, mlp_ratio, True, impl
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=LN_EPS)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size[0] * patch_size[1] * chans)

    def forward_encoder(
        self, imgs: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        batch, length, dim = x.shape
        keep = int(length * (1 - self.mask_ratio))  # Python floats: 300 at 0.8 keep 59
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, dim))
        mask = torch.ones(batch, length, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        shuffled = torch.cat([x[:, 1:], mask_tokens], dim=1)
        index = ids_restore[:, :, None].expand(-1, -1, x.shape[2])
        x = torch.cat([x[:, :1], torch.gather(shuffled, 1, index)], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """``(1 - w) * mse(all patches) + w * (1 - ncc)`` (no ``norm_pix_loss``)."""
        mse = ((pred - patchify(imgs, self.patch)) ** 2).mean()
        imgs_hat = unpatchify(pred, self.patch, self.grid)
        length = imgs.shape[-1]
        ncc = (
            (_zero_normalize(imgs, 1e-12) * _zero_normalize(imgs_hat, 1e-12)).sum(-1) / (length - 1)
        ).mean()
        return (1 - self.ncc_weight) * mse + self.ncc_weight * (1 - ncc)

    def forward(
        self, imgs: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent, mask, ids_restore = self.forward_encoder(imgs, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred), pred, mask


class BasicBlock(nn.Module):
    """torchvision ``BasicBlock``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """torchvision ``Bottleneck`` (v1.5: the stride sits on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = _downsample(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _downsample(inplanes: int, planes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


RESNETS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


class ResNetEncoder(nn.Module):
    """``nn.Sequential(*resnet.children()[:-1])`` as the reference's ``encoder``: NCHW -> ``(B, F)``.

    Children: 0 conv1, 1 bn1, 2 relu, 3 maxpool, 4..7 layer1..4, 8 avgpool. The reference
    ends in ``.squeeze()``; here the batch axis is kept (``flatten(1)``).
    """

    def __init__(self, backbone: str = "resnet18") -> None:
        super().__init__()
        block, sizes = RESNETS[backbone]
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        inplanes = 64
        for stage, (blocks, planes) in enumerate(zip(sizes, (64, 128, 256, 512))):
            stage_blocks = []
            for j in range(blocks):
                stride = 2 if stage > 0 and j == 0 else 1
                stage_blocks.append(block(inplanes, planes, stride))
                inplanes = planes * block.expansion
            layers.append(nn.Sequential(*stage_blocks))
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.encoder = nn.Sequential(*layers)
        self.pooled_dim = inplanes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)


class SimCLRProjectionHead(nn.Module):
    """lightly ≥ 1.4 head: Linear(no bias) → BN1d → ReLU → Linear(no bias) → BN1d."""

    def __init__(self, dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, dim, bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(),
            nn.Linear(dim, out_dim, bias=False),
            nn.BatchNorm1d(out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SimCLR(nn.Module):
    """``encoder_imaging`` (ResNet) + ``projection_head``: NCHW -> ``(B, 128)``."""

    def __init__(self, backbone: str = "resnet18", out_dim: int = 128) -> None:
        super().__init__()
        self.encoder_imaging = ResNetEncoder(backbone)
        self.projection_head = SimCLRProjectionHead(self.encoder_imaging.pooled_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.encoder_imaging(x))


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """lightly's single-device NT-Xent: logits ``[[z0·z1ᵀ, z0·z0ᵀ], [z1·z0ᵀ, z1·z1ᵀ]] / τ``.

    The same-view blocks lose their diagonal; labels ``arange(n)`` twice; mean cross-entropy.
    """
    z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
    n = z0.shape[0]
    off_diag = ~torch.eye(n, dtype=torch.bool, device=z0.device)
    l00 = (z0 @ z0.T / temperature)[off_diag].view(n, n - 1)
    l11 = (z1 @ z1.T / temperature)[off_diag].view(n, n - 1)
    logits = torch.cat(
        [torch.cat([z0 @ z1.T / temperature, l00], 1), torch.cat([z1 @ z0.T / temperature, l11], 1)]
    )
    labels = torch.arange(n, device=z0.device).repeat(2)
    return F.cross_entropy(logits, labels)


def load_arrays(module: nn.Module, arrays: dict[str, np.ndarray]) -> nn.Module:
    """Load a ``{torch name: array}`` state dict strictly (every name must match)."""
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    module.load_state_dict(state, strict=True)
    return module


def ecg_encoder(cfg: dict, impl: AttentionImpl = "explicit") -> ECGEncoder:
    """Build from a ``ViTConfig.to_dict()`` (attention pooling only)."""
    if cfg["global_pool"] != "attention_pool":
        raise ValueError(f"only global_pool='attention_pool' is built, got {cfg['global_pool']!r}")
    return ECGEncoder(
        tuple(cfg["img_size"]),
        tuple(cfg["patch_size"]),
        cfg["embed_dim"],
        cfg["depth"],
        cfg["num_heads"],
        cfg["mlp_ratio"],
        cfg["qkv_bias"],
        impl,
    )


def mae(cfg: dict, impl: AttentionImpl = "explicit") -> MAE:
    """Build from a ``MAEConfig.to_dict()`` (plain MAE: no LitMAE norm, no norm_pix_loss)."""
    if cfg["lit_mae_norm"] or cfg["norm_pix_loss"]:
        raise ValueError("only the plain MAE (lit_mae_norm=False, norm_pix_loss=False) is built")
    return MAE(
        tuple(cfg["img_size"]),
        tuple(cfg["patch_size"]),
        cfg["embed_dim"],
        cfg["depth"],
        cfg["num_heads"],
        cfg["decoder_embed_dim"],
        cfg["decoder_depth"],
        cfg["decoder_num_heads"],
        cfg["mlp_ratio"],
        cfg["qkv_bias"],
        cfg["mask_ratio"],
        cfg["ncc_weight"],
        impl,
    )
