"""Handing the host heap's free pages back to the OS between the phases of an iteration.

On the CPU backend every array and every temporary buffer of a compiled program lives on
the host heap (glibc's malloc). Buffers freed after a phase mostly stay mapped: they are
smaller than malloc's mmap threshold and scattered over the arenas of XLA's worker
threads, so the process keeps them (0.6–1.4 GB after a SmolLM2 update at the
reference's settings, BUILD_NOTES.md "Throughput", session 13) and the next phase's peak
comes on top. `malloc_trim(0)` returns every whole free page of every arena to the OS
(a few milliseconds); where there is no glibc it is a no-op. The same holds for what the
compiler frees: `compile_then_release` compiles a program ahead of its first run and
trims in between.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Callable

import jax


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to do
        return None
    return getattr(libc, "malloc_trim", None)


def release_free_memory() -> bool:
    """Returns the host heap's free pages to the OS; False where that is not available."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def call_signature(args: tuple) -> tuple:
    """What a jitted function is compiled for: the arguments' tree structure and each
    leaf's shape, dtype, weak type and sharding (`None` / the type for non-arrays)."""
    leaves, tree = jax.tree.flatten(args)
    return tree, tuple((getattr(x, "shape", None), getattr(x, "dtype", type(x)),
                        getattr(x, "weak_type", False), getattr(x, "sharding", None))
                       for x in leaves)


def compile_then_release(jitted, cache: dict, *args, **static):
    """`jitted(*args, **static)`, compiled ahead of time the first time `args` have a new
    signature (`call_signature`; the executable kept in `cache`), with the host memory
    the compilation freed returned to the OS before the program runs: otherwise the first
    call's peak is the compiler's leftovers plus the program's own buffers."""
    key = (call_signature(args), tuple(sorted(static.items())))
    compiled = cache.get(key)
    if compiled is None:
        compiled = jitted.lower(*args, **static).compile()
        release_free_memory()
        cache[key] = compiled
    return compiled(*args)
