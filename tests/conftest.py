"""Test-session setup: 4 forced host devices, full-precision matmuls, shared caches.

Everything here is set in ``os.environ`` at import time of the first conftest, before
JAX initialises, so it holds for the whole session: in the pytest process, in the
pytest-xdist workers it starts (they inherit its environment) and in the subprocesses
the tests start (CLI runs, the two-process training test, the README's shell blocks).

Most of the suite's time is XLA compilation and Python start-up, so two caches are
shared by all those processes:

- a persistent XLA compilation cache in a temporary directory of this session
  (``JAX_COMPILATION_CACHE_DIR``; set it yourself to keep one across sessions): a program
  compiled by one test, worker or subprocess is loaded, not recompiled, by the next;
- Python bytecode: ``PYTHONDONTWRITEBYTECODE`` is lifted so each new process loads the
  cached ``.pyc`` of jax, torch and scipy instead of recompiling their sources (~8 s of
  CPU per process).
"""

import os
import shutil
import sys
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

# Created by the first process of the session (the xdist controller), inherited by the rest.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxecg-xla-cache-")
# Cache every program: the many sub-second compiles add up, and loading one is faster.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax

# Golden tolerances are ~20x the fp32-vs-fp64 difference; TF32/bf16 passes would miss them.
jax.config.update("jax_default_matmul_precision", "highest")


# Modules of minute-long tests (training runs, whole commands), scheduled first: with the
# two xdist workers taking tests in collection order, the session then does not end with
# one worker idle while the other finishes a long test. Any other module keeps its order.
_LONG_MODULES = ("test_train_parallel", "test_train_e2e", "test_readme", "test_train_pretrained")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(_LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


def pytest_unconfigure(config) -> None:
    """The process that made the session's compilation cache removes it at the end."""
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
