"""Which rewrites of a decode step would make it faster on this machine's XLA:CPU?

A question the decode profile leaves open (`profile_decode.py`: the step is ~2x its matmul
floor) is whether the usual rewrites close the gap: a scanned layer stack, fused QKV and
gate/up kernels, another formulation of attention or of the per-row LoRA, bf16 weight
storage. This script answers it on a *synthetic* decode step, not our decoder: a minimal
Llama layer (RMSNorm, GQA attention over a KV cache, SwiGLU; no RoPE) at SmolLM2-135M's
shapes with random f32 weights, LoRA on q and v for 2 adapters, run for --steps steps in a
`lax.while_loop` with the cache in the carry (the sampler's structure). Each variant changes
one factor of the baseline (unrolled layers, separate projections, einsum attention, the
decoder's all-adapter LoRA, f32 weights); variants are timed alternately, --repeats times,
and the medians printed as ms per step.

  python benchmarks/decode_variants.py --batch=8 --repeats=5
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

# SmolLM2-135M: layers, hidden, heads, kv heads, head dim, MLP width; adapters, rank.
L, D, H, KV, HD, F, NA, R = 30, 576, 9, 3, 64, 1536, 2, 8


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    scan: bool = False  # layers in a lax.scan over stacked weights (else unrolled)
    fused: bool = False  # one QKV and one gate/up kernel
    attention: str = "einsum"  # "einsum" (batched dots) or "elementwise" (multiply + sum)
    lora: str = "all_adapters"  # "none", "all_adapters" (the decoder's), "row_gather"
    weights: str = "float32"  # storage dtype; bfloat16 accumulates in f32


VARIANTS = (
    Variant("baseline (unrolled, separate, einsum attn, all-adapter LoRA, f32)"),
    Variant("no LoRA", lora="none"),
    Variant("LoRA: per-row gather of A and B", lora="row_gather"),
    Variant("scanned layer stack", scan=True),
    Variant("fused QKV and gate/up", fused=True),
    Variant("elementwise attention", attention="elementwise"),
    Variant("bf16 weights, f32 accumulation", weights="bfloat16"),
)


def _weights(seed: int, dtype):
    rng = np.random.default_rng(seed)
    w = lambda *s: jnp.asarray(rng.standard_normal(s, np.float32) * 0.02).astype(dtype)
    lw = lambda *s: jnp.asarray(rng.standard_normal(s, np.float32) * 0.02)
    return [dict(q=w(D, H * HD), k=w(D, KV * HD), v=w(D, KV * HD), o=w(H * HD, D),
                 g=w(D, F), u=w(D, F), d=w(F, D), n1=jnp.ones(D), n2=jnp.ones(D),
                 qa=lw(NA, D, R), qb=lw(NA, R, H * HD), va=lw(NA, D, R), vb=lw(NA, R, KV * HD))
            for _ in range(L)]


def _fuse(layer):
    out = dict(layer)
    out["qkv"] = jnp.concatenate([out.pop("q"), out.pop("k"), out.pop("v")], axis=1)
    out["gu"] = jnp.concatenate([out.pop("g"), out.pop("u")], axis=1)
    return out


def _dot(x, w):  # [batch, in] x [in, out] -> f32, whatever w's storage dtype
    return jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def _rms(x, scale):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5) * scale


def _lora(x, a, b, ids, mode):
    """The LoRA delta `[batch, out]` for rows' own adapters."""
    n, d, r = a.shape
    rows = jnp.clip(ids, 0, n - 1)
    if mode == "all_adapters":
        h = x @ a.transpose(1, 0, 2).reshape(d, n * r)  # [batch, adapters * rank]
        own = ids[:, None] == jnp.arange(n)
        h = jnp.where(own[:, :, None], h.reshape(-1, n, r), 0.0).sum(1)  # [batch, rank]
    else:
        h = jnp.einsum("bd,bdr->br", x, a[rows])
    delta = jnp.einsum("br,bre->be", h, b[rows]) * 2.0
    return jnp.where((ids >= 0)[:, None], delta, 0.0)


def _attend(q, keys, values, valid, mode, batch):
    q = q.reshape(batch, KV, H // KV, HD)  # [batch, kv_heads, groups, head_dim]
    if mode == "einsum":
        s = jnp.einsum("bkgd,bksd->bkgs", q, keys)
    else:
        s = jnp.sum(q[:, :, :, None, :] * keys[:, :, None], -1)
    s = jnp.where(valid[:, None, None], s * HD ** -0.5, -1e30)
    p = jax.nn.softmax(s, -1)  # [batch, kv_heads, groups, slots]
    if mode == "einsum":
        o = jnp.einsum("bkgs,bksd->bkgd", p, values)
    else:
        o = jnp.sum(p[..., None] * values[:, :, None], -2)
    return o.reshape(batch, H * HD)


def _layer(v: Variant, x, lw, keys, values, valid, slot, ids):
    batch = x.shape[0]
    h = _rms(x, lw["n1"])
    if v.fused:
        q, k, val = jnp.split(_dot(h, lw["qkv"]), [H * HD, H * HD + KV * HD], -1)
    else:
        q, k, val = _dot(h, lw["q"]), _dot(h, lw["k"]), _dot(h, lw["v"])
    if v.lora != "none":
        q = q + _lora(h, lw["qa"], lw["qb"], ids, v.lora)
        val = val + _lora(h, lw["va"], lw["vb"], ids, v.lora)
    keys = jax.lax.dynamic_update_slice(keys, k.reshape(batch, KV, 1, HD), (0, 0, slot, 0))
    values = jax.lax.dynamic_update_slice(values, val.reshape(batch, KV, 1, HD),
                                          (0, 0, slot, 0))
    x = x + _dot(_attend(q, keys, values, valid, v.attention, batch), lw["o"])
    h = _rms(x, lw["n2"])
    if v.fused:
        g, u = jnp.split(_dot(h, lw["gu"]), 2, -1)
    else:
        g, u = _dot(h, lw["g"]), _dot(h, lw["u"])
    return x + _dot(jax.nn.silu(g) * u, lw["d"]), keys, values


def _program(v: Variant, steps: int, first_slot: int):
    def run(weights, ids, keys, values):
        batch = ids.shape[0]
        valid = jnp.ones((batch, (keys if v.scan else keys[0]).shape[-2]), bool)

        def step(carry):
            i, x, keys, values = carry
            slot = first_slot + i
            if v.scan:
                def body(x, layer):
                    lw, k, val = layer
                    x, k, val = _layer(v, x, lw, k, val, valid, slot, ids)
                    return x, (k, val)
                x, (keys, values) = jax.lax.scan(body, x, (weights, keys, values))
            else:
                nk, nv = [], []
                for lw, k, val in zip(weights, keys, values):
                    x, k, val = _layer(v, x, lw, k, val, valid, slot, ids)
                    nk.append(k)
                    nv.append(val)
                keys, values = tuple(nk), tuple(nv)
            return i + 1, x * 0.5, keys, values

        x0 = jnp.ones((batch, D), jnp.float32)
        # The cache comes back out, so its donated buffers are updated in place.
        return jax.lax.while_loop(lambda c: c[0] < steps, step, (0, x0, keys, values))[1:]

    return jax.jit(run, donate_argnums=(2, 3))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--slots", type=int, default=192, help="KV cache slots")
    p.add_argument("--steps", type=int, default=32, help="decode steps per timed call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", default="", help="comma list of variant indices (0 = baseline)")
    args = p.parse_args()
    chosen = [VARIANTS[int(i)] for i in args.only.split(",")] if args.only else list(VARIANTS)
    ids = jnp.asarray(np.arange(args.batch) % NA, jnp.int32)
    cache_shape = (args.batch, KV, args.slots, HD)
    runs = {}
    for v in chosen:
        weights = _weights(0, jnp.dtype(v.weights))
        if v.fused:
            weights = [_fuse(lw) for lw in weights]
        if v.scan:
            weights = jax.tree.map(lambda *a: jnp.stack(a), *weights)

        def caches(v=v):
            if v.scan:
                return jnp.zeros((L, *cache_shape)), jnp.zeros((L, *cache_shape))
            return (tuple(jnp.zeros(cache_shape) for _ in range(L)),
                    tuple(jnp.zeros(cache_shape) for _ in range(L)))

        fn = _program(v, args.steps, args.slots - args.steps)
        jax.block_until_ready(fn(weights, ids, *caches()))  # compile + warm up
        runs[v] = (fn, weights, caches)
    times = {v: [] for v in chosen}
    for _ in range(args.repeats):
        for v in chosen:
            fn, weights, caches = runs[v]
            keys, values = caches()
            t = time.perf_counter()
            jax.block_until_ready(fn(weights, ids, keys, values))
            times[v].append(1e3 * (time.perf_counter() - t) / args.steps)
    print(f"synthetic decode step, SmolLM2-135M shapes, batch {args.batch}, {args.slots} "
          f"slots, {args.steps} steps a call, median of {args.repeats} (ms per step):")
    for v in chosen:
        runs_ms = " ".join(f"{t:.1f}" for t in times[v])
        print(f"  {np.median(times[v]):7.2f}  {v.name}   [{runs_ms}]")


if __name__ == "__main__":
    main()
