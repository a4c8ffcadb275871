"""Return the heap a compilation freed to the OS.

XLA's compiler allocates hundreds of MiB while it compiles a train step and frees them
afterwards, but glibc keeps freed memory of its arenas mapped: without a trim a JAX
training process holds ~0.7 GiB it no longer uses, 1.4-1.7x the PyTorch reference's
resident memory (``benchmarks/README.md``). ``malloc_trim(0)`` hands it back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return getattr(libc, "malloc_trim", None)


def release_free_heap() -> None:
    """Give freed heap back to the OS (glibc ``malloc_trim``); a no-op on other C libraries."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
