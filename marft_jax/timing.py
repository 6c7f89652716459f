"""Wall-clock helpers for the benchmarks (never used by tests: tests assert no timings)."""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of `fn()` takes (the caller blocks on results inside `fn`)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_ms(fn: Callable[..., Any], *args: Any, repeats: int) -> float:
    """Median milliseconds of `fn(*args)` over `repeats` calls, after one warm-up call
    (compilation); each call waits for its results (`jax.block_until_ready`)."""
    jax.block_until_ready(fn(*args))
    times = [timed(lambda: jax.block_until_ready(fn(*args))) for _ in range(repeats)]
    return 1e3 * float(np.median(times))
