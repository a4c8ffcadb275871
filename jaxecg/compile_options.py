"""XLA options jaxecg's own compiled programs use (train/eval steps, embed, evaluate).

On CPU, XLA's YNNPACK library for dot-shaped work
(``xla_cpu_experimental_ynn_fusion_type=dot``) runs the ResNet's convolutions and their
gradients 1.5x (forward) to 1.7x (SimCLR train step) faster than the default lowering, at
fp32 rounding (the golden ResNet/SimCLR cases pass through it, ``tests/test_resnet.py``).
The ViT programs neither gain nor lose speed with it but compile ~15 % slower, so only
the ResNet's get it (``benchmarks/README.md``); other platforms get XLA's defaults.
Passed per ``jax.jit`` (``compiler_options=``), never through ``XLA_FLAGS``, so a user's
own programs in the same process are unaffected — pass ``compiler_options(resnet=True)``
to your ``jax.jit`` of a CMR model to get the same on CPU.
"""

from __future__ import annotations

from typing import Any

import jax

CPU_RESNET_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
}


def compiler_options(*, resnet: bool, platform: str | None = None) -> dict[str, Any] | None:
    """Options for ``jax.jit(..., compiler_options=...)`` of a program running a ResNet
    (``resnet=True``: CMR encoder, classifier, SimCLR) or not, on ``platform`` (default:
    JAX's backend)."""
    platform = jax.default_backend() if platform is None else platform
    return dict(CPU_RESNET_OPTIONS) if resnet and platform == "cpu" else None
