"""Cardiac-MRI augmentations in JAX, the reference's pipeline (docs/reference.md#cmr-augmentations).

Images are ONE sample ``(H, W, C)`` float32 with values in [0, 1] (NHWC without
the batch axis; ``C`` is 3 for the ResNet encoders). Every function is a pure
function of ``(key, image)``, ``jit``/``vmap``-safe, and returns
``(img_size, img_size, C)``. The augmented view is, in torchvision's order:
horizontal flip (p 0.5) → rotation by U(-45°, 45°) (nearest, zero fill) →
colour jitter (brightness 0.5, contrast 0.5, saturation 0.25, applied in a random
order, clamped to [0, 1]) → random-resized-crop (scale (0.6, 1), ratio
(3/4, 4/3), 10 tries then a centre crop; bilinear with antialiasing).
Random numbers come from JAX, so views are not torch's draws — only their laws.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxecg.config import Config

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)
_CROP_TRIES = 10


@dataclasses.dataclass(frozen=True)
class CMRAugmentConfig(Config):
    """CMR augmentation settings (the reference's imaging transform)."""

    img_size: int = 210
    flip_prob: float = 0.5
    rotation: float = 45.0
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.25
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    augmentation_rate: float = 0.95

    PRESETS: ClassVar[dict[str, dict]] = {"default": {}}


def _check_image(x: jax.Array) -> None:
    if x.ndim != 3:
        raise ValueError(f"expected one (H, W, C) image, got shape {x.shape}")


def hflip(key: jax.Array, x: jax.Array, prob: float = 0.5) -> jax.Array:
    """Mirror ``(H, W, C)`` left-right with probability ``prob``."""
    _check_image(x)
    return jnp.where(jax.random.uniform(key) < prob, x[:, ::-1, :], x)


def rotate(key: jax.Array, x: jax.Array, max_degrees: float = 45.0) -> jax.Array:
    """Rotate by U(-max, max) degrees about the image centre; nearest sampling, zero fill.

    Same geometry as torchvision's ``rotate`` on tensors: pixel centres relative
    to the centre are mapped back by the inverse rotation and rounded to the
    nearest source pixel; positive angles turn counter-clockwise on screen.
    """
    _check_image(x)
    height, width = x.shape[:2]
    theta = jnp.deg2rad(jax.random.uniform(key, (), minval=-max_degrees, maxval=max_degrees))
    yo, xo = jnp.meshgrid(
        jnp.arange(height) - (height - 1) / 2, jnp.arange(width) - (width - 1) / 2, indexing="ij"
    )
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    xs = jnp.round(cos * xo - sin * yo + (width - 1) / 2).astype(jnp.int32)
    ys = jnp.round(sin * xo + cos * yo + (height - 1) / 2).astype(jnp.int32)
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    gathered = x[jnp.clip(ys, 0, height - 1), jnp.clip(xs, 0, width - 1)]
    return jnp.where(inside[..., None], gathered, jnp.zeros((), x.dtype))


def _grayscale(x: jax.Array) -> jax.Array:
    if x.shape[-1] == 1:
        return x
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b)[..., None]


def _blend(x: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
    # torchvision clamps float images to [0, 1] after every colour operation. The factor
    # takes the image's dtype, so bf16 images (mixed precision) stay bf16.
    factor = factor.astype(x.dtype)
    return jnp.clip(factor * x + (1.0 - factor) * other, 0.0, 1.0)


def colour_jitter(
    key: jax.Array,
    x: jax.Array,
    brightness: float = 0.5,
    contrast: float = 0.5,
    saturation: float = 0.25,
) -> jax.Array:
    """Brightness, contrast and saturation jitter in a random order (torchvision ``ColorJitter``).

    Factors are drawn from U(max(0, 1-s), 1+s); brightness blends with black,
    contrast with the mean grey level, saturation with the greyscale image.
    """
    _check_image(x)
    # One draw: three factors and three sort keys (argsort of iid uniforms is a uniform
    # random permutation, torchvision's randperm of the operations).
    u = jax.random.uniform(key, (6,))

    def factor(v: jax.Array, strength: float) -> jax.Array:
        lo = max(0.0, 1.0 - strength)
        return lo + (1.0 + strength - lo) * v

    f_b, f_c, f_s = factor(u[0], brightness), factor(u[1], contrast), factor(u[2], saturation)
    ops = (
        lambda y: _blend(y, jnp.zeros_like(y), f_b),
        lambda y: _blend(y, jnp.mean(_grayscale(y)), f_c),
        lambda y: _blend(y, _grayscale(y), f_s),
    )
    order = jnp.argsort(u[3:])
    for position in range(len(ops)):
        # Evaluate the three cheap blends and select: lighter to compile than lax.switch.
        x = jnp.select([order[position] == i for i in range(len(ops))], [op(x) for op in ops])
    return x


def _crop_box(
    key: jax.Array,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w) of the crop."""
    area = height * width
    # One draw for all tries and the position: fewer PRNG calls compile much faster under vmap.
    u = jax.random.uniform(key, (2 * _CROP_TRIES + 2,))
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:_CROP_TRIES])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[_CROP_TRIES : 2 * _CROP_TRIES])
    w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(ok)
    # Fallback when no try fits: the largest centre crop within the ratio bounds.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fb_w, fb_h = round(height * max(ratio)), height
    else:
        fb_w, fb_h = width, height
    any_ok = ok.any()
    h_sel = jnp.where(any_ok, h[first], fb_h)
    w_sel = jnp.where(any_ok, w[first], fb_w)
    u_top, u_left = u[-2], u[-1]
    top = jnp.where(any_ok, jnp.floor(u_top * (height - h_sel + 1)), (height - fb_h) // 2)
    left = jnp.where(any_ok, jnp.floor(u_left * (width - w_sel + 1)), (width - fb_w) // 2)
    return top.astype(jnp.int32), left.astype(jnp.int32), h_sel, w_sel


def _interpolation_matrix(
    start: jax.Array, extent: jax.Array, in_size: int, out_size: int
) -> jax.Array:
    """``(out_size, in_size)`` weights resampling ``[start, start + extent)`` to ``out_size`` pixels.

    Triangle (bilinear) kernel, widened by the shrink factor when downsampling
    (antialiasing, as torch's ``antialias=True``), normalised per output pixel;
    pixel centres sit at ``i + 0.5`` (``align_corners=False``).
    """
    scale = out_size / extent
    centres = start + (jnp.arange(out_size) + 0.5) / scale
    support = jnp.maximum(1.0, 1.0 / scale)
    distance = jnp.abs(jnp.arange(in_size) + 0.5 - centres[:, None]) / support
    weights = jnp.maximum(0.0, 1.0 - distance)
    return weights / jnp.sum(weights, axis=1, keepdims=True)


def resized_crop(
    x: jax.Array, top: jax.Array, left: jax.Array, h: jax.Array, w: jax.Array, size: int
) -> jax.Array:
    """Crop the box ``(top, left, h, w)`` (traced values) and resize it to ``(size, size)``.

    Separable bilinear resampling with antialiasing when shrinking, as
    torchvision's ``resized_crop``; two small matrix products, so it stays cheap
    to compile under ``vmap``. The products run in ``x``'s dtype: fp32 images at full
    precision (torchvision's results), bf16 ones (mixed precision) in bf16 like the model
    that consumes them — they would be rounded to bf16 at its input anyway.
    """
    f32 = jnp.float32
    rows = _interpolation_matrix(top.astype(f32), h.astype(f32), x.shape[0], size)
    cols = _interpolation_matrix(left.astype(f32), w.astype(f32), x.shape[1], size)
    precision = jax.lax.Precision.HIGHEST if x.dtype == f32 else None
    out = jnp.einsum(
        "oh,hwc,pw->opc", rows.astype(x.dtype), x, cols.astype(x.dtype), precision=precision
    )
    return out.astype(x.dtype)


def random_resized_crop(
    key: jax.Array,
    x: jax.Array,
    size: int,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> jax.Array:
    """torchvision ``RandomResizedCrop(size, scale, ratio)`` of ``(H, W, C)`` → ``(size, size, C)``."""
    _check_image(x)
    top, left, h, w = _crop_box(key, x.shape[0], x.shape[1], scale, ratio)
    return resized_crop(x, top, left, h, w, size)


def resize(x: jax.Array, size: int) -> jax.Array:
    """Resize ``(H, W, C)`` to ``(size, size, C)`` (bilinear, antialiased) — the plain view.

    torchvision's ``Resize(int)`` scales the shorter edge; for the square frames
    of the reference both agree, and a square output keeps views batchable.
    """
    _check_image(x)
    zero = jnp.zeros((), jnp.int32)
    return resized_crop(x, zero, zero, jnp.int32(x.shape[0]), jnp.int32(x.shape[1]), size)


def cmr_augment(key: jax.Array, x: jax.Array, cfg: CMRAugmentConfig) -> jax.Array:
    """The full augmented view of one image ``(H, W, C)`` → ``(img_size, img_size, C)``."""
    k_flip, k_rot, k_col, k_crop = jax.random.split(key, 4)
    x = hflip(k_flip, x, cfg.flip_prob)
    x = rotate(k_rot, x, cfg.rotation)
    x = colour_jitter(k_col, x, cfg.brightness, cfg.contrast, cfg.saturation)
    return random_resized_crop(k_crop, x, cfg.img_size, cfg.crop_scale, cfg.crop_ratio)


def cmr_train_view(key: jax.Array, x: jax.Array, cfg: CMRAugmentConfig, train: bool) -> jax.Array:
    """Fine-tuning input: augmented with probability ``augmentation_rate`` when training,
    else (and always in evaluation) only resized. ``train`` is a Python bool."""
    if not train:
        return resize(x, cfg.img_size)
    k_rate, k_aug = jax.random.split(key)
    augmented = cmr_augment(k_aug, x, cfg)
    return jnp.where(
        jax.random.uniform(k_rate) < cfg.augmentation_rate, augmented, resize(x, cfg.img_size)
    )


def cmr_contrastive_views(
    key: jax.Array, x: jax.Array, cfg: CMRAugmentConfig
) -> tuple[jax.Array, jax.Array]:
    """SimCLR's two views of one image: view 1 always augmented, view 2 augmented with
    probability ``augmentation_rate`` and otherwise only resized."""
    k_views, k_rate = jax.random.split(key)
    # Both augmented views from one vmapped trace: half the program to compile.
    views = jax.vmap(lambda k: cmr_augment(k, x, cfg))(jax.random.split(k_views, 2))
    keep = jax.random.uniform(k_rate) < cfg.augmentation_rate
    return views[0], jnp.where(keep, views[1], resize(x, cfg.img_size))


def cmr_contrastive_views_batch(
    key: jax.Array, images: jax.Array, cfg: CMRAugmentConfig
) -> tuple[jax.Array, jax.Array]:
    """:func:`cmr_contrastive_views` over ``(B, H, W, C)`` with one key per image."""
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, im: cmr_contrastive_views(k, im, cfg))(keys, images)


def cmr_train_view_batch(
    key: jax.Array, images: jax.Array, cfg: CMRAugmentConfig, train: bool
) -> jax.Array:
    """:func:`cmr_train_view` over ``(B, H, W, C)`` with one key per image."""
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, im: cmr_train_view(k, im, cfg, train))(keys, images)
