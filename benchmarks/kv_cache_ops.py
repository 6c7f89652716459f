"""The XLA:CPU facts behind the sampler's KV-cache options (BUILD_NOTES, "Throughput").

Three timings at SmolLM2's decode shapes (batch 8, 3 KV heads x 3 query groups, head dim
64, 30 layers), each a median of `--repeats` calls:
  1. one-slot cache writes (dynamic-update-slice in a loop) into a float32, a bfloat16
     and a uint16 array: XLA:CPU copies the whole bfloat16 array on every write;
  2. attention reads (scores and weighted values) over a float32 cache and over a
     bfloat16 cache stored as uint16 bits (`models.decoder.BF16_BITS`);
  3. attention over the first W slots of a float32 cache by a static slice, against
     the whole cache: the slice is copied, so it is not cheaper.

    python benchmarks/kv_cache_ops.py --repeats=20
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from marft_jax.timing import median_ms

B, KV, G, D, LAYERS = 8, 3, 3, 64, 30


def cache_writes(repeats, slots=4096, steps=200):
    for dtype in (jnp.float32, jnp.bfloat16, jnp.uint16):
        def run(cache, new):
            body = lambda i, c: jax.lax.dynamic_update_slice(c, new, (0, 0, i, 0))
            return jax.lax.fori_loop(0, steps, body, cache)
        cache = jnp.zeros((B, KV, slots, D), dtype)
        new = jnp.ones((B, KV, 1, D), dtype)
        fn = jax.jit(run, donate_argnums=0)  # the cache is donated, as the sampler's is
        cache = jax.block_until_ready(fn(cache, new))
        times = []
        for _ in range(max(repeats // 4, 3)):
            t = time.perf_counter()
            cache = jax.block_until_ready(fn(cache, new))
            times.append(time.perf_counter() - t)
        ms = 1e3 * float(np.median(times))
        print(f"cache write, {jnp.dtype(dtype).name:8s} [{B},{KV},{slots},{D}]: "
              f"{1e3 * ms / steps:8.2f} us/write")


def _attention(q, keys, values, width=None):
    out = 0.0
    for k, v in zip(keys, values):
        if k.dtype == jnp.uint16:
            k = jax.lax.bitcast_convert_type(k, jnp.bfloat16)
            v = jax.lax.bitcast_convert_type(v, jnp.bfloat16)
        if width is not None:
            k, v = k[:, :, :width], v[:, :, :width]
        s = jnp.einsum("bkqd,bksd->bkqs", q.astype(k.dtype), k,
                       preferred_element_type=jnp.float32)
        p = jax.nn.softmax(s, -1).astype(v.dtype)
        out = out + jnp.einsum("bkqs,bksd->bkqd", p, v, preferred_element_type=jnp.float32)
    return out


def attention_reads(repeats, slots=383, width=192):
    q = jnp.ones((B, KV, G, D), jnp.float32)
    keys = [jax.random.normal(jax.random.key(i), (B, KV, slots, D)) for i in range(LAYERS)]
    bits = [jax.lax.bitcast_convert_type(k.astype(jnp.bfloat16), jnp.uint16) for k in keys]
    cases = {f"float32 cache, all {slots} slots": (keys, None),
             f"bfloat16 cache (uint16 bits), all {slots} slots": (bits, None),
             f"float32 cache, first {width} slots by a static slice": (keys, width)}
    for name, (cache, w) in cases.items():
        fn = jax.jit(lambda q, c, w=w: _attention(q, c, c, w))
        print(f"attention read, {LAYERS} layers, {name}: "
              f"{median_ms(fn, q, cache, repeats=repeats):7.2f} ms")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    cache_writes(args.repeats)
    attention_reads(args.repeats)


if __name__ == "__main__":
    main()
