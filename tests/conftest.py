"""Test-session setup: 4 forced host devices and full-precision matmuls.

The device count must be fixed before JAX initialises its backend, so it is set
here, at import time of the first conftest, for the whole session.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

import jax  # noqa: E402

# Golden tolerances are ~20x the fp32-vs-fp64 difference; TF32/bf16 passes would miss them.
jax.config.update("jax_default_matmul_precision", "highest")
