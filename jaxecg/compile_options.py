"""XLA options jaxecg's own compiled programs use (train/eval steps, embed, evaluate).

On CPU, XLA's YNNPACK library for dot-shaped work
(``xla_cpu_experimental_ynn_fusion_type=dot``) runs the ResNet's convolutions and their
gradients 1.5x (forward) to 1.8x (SimCLR train step) faster than the default lowering, at
fp32 rounding (the golden ResNet/SimCLR cases pass through it, ``tests/test_resnet.py``);
the ViT programs neither gain nor lose (``benchmarks/README.md``). Other platforms get
XLA's defaults. Passed per ``jax.jit`` (``compiler_options=``), never through
``XLA_FLAGS``, so a user's own programs in the same process are unaffected — pass
``compiler_options()`` to your ``jax.jit`` to get the same on CPU.
"""

from __future__ import annotations

from typing import Any

import jax

CPU_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
}


def compiler_options(platform: str | None = None) -> dict[str, Any] | None:
    """Options for ``jax.jit(..., compiler_options=...)`` on ``platform`` (default: JAX's)."""
    platform = jax.default_backend() if platform is None else platform
    return dict(CPU_OPTIONS) if platform == "cpu" else None
