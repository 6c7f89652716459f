"""Where one decode step of SmolLM2-135M goes on this machine: a component breakdown.

Each part is jitted alone and timed (median of --repeats after a warm-up) at the sampler's
decode shapes (batch b, one new token, a KV cache of --slots slots):

  step          decoder layers + LM head + drawing one token (what the sampler's loop body does)
  layers        the decoder layers only (attention over the cache included)
  layers_nolora the same without LoRA leaves (a model loaded with lora=None)
  lm_head       the tied-embedding projection [b, H] x [H, vocab]
  draw          greedy argmax, or top-k 50 sampling, over [b, vocab] logits
  matmul_floor  every weight matrix of the layers once, x @ W with x [b, in]: the weight
                streaming a decode step cannot avoid, with no attention, norms or LoRA
  copy          a numpy copy of the layers' weight bytes (the memory-bandwidth floor)

  python benchmarks/profile_decode.py --batch=8 --dtype=float32

With --op_breakdown it instead traces one whole `generate_with_cache` call (prefill, then
--new_tokens greedy decode steps, computing in --dtype) with the JAX profiler and prints
the XLA:CPU thread time per HLO op (summed over the pool's threads, by the op's JAX name),
the call's wall time, and how busy the threads were: thread time / (threads x wall).

  python benchmarks/profile_decode.py --op_breakdown --batch=8 --new_tokens=64
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

from marft_jax.training.entry import put_project_on_path  # noqa: E402

put_project_on_path()  # config files import `configs.*`
if "--op_breakdown" in sys.argv:  # XLA:CPU records per-thunk trace events only with this flag
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from marft_jax.models import functional as F  # noqa: E402
from marft_jax.models.config import LoraConfig  # noqa: E402
from marft_jax.models.decoder import KVCache  # noqa: E402
from marft_jax.models.weights import load_model  # noqa: E402
from marft_jax.sampling import SamplerConfig  # noqa: E402
from marft_jax.sampling import distributions as D  # noqa: E402
from marft_jax.sampling.generate import cast_params  # noqa: E402
from marft_jax.timing import median_ms, timed  # noqa: E402


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--slots", type=int, default=192, help="KV cache slots (prompt + new)")
    p.add_argument("--dtype", default="float32", help="compute dtype of the weights")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--op_breakdown", action="store_true",
                   help="trace one generate call and print thread time per op")
    p.add_argument("--prompt_len", type=int, default=128, help="--op_breakdown only")
    p.add_argument("--new_tokens", type=int, default=64, help="--op_breakdown only")
    return p.parse_args()


def op_breakdown(m, args):
    """Traces one prefill + decode call; prints thread time per op and thread utilisation."""
    from jax._src.lib import _profile_data

    from marft_jax.sampling.generate import generate_with_cache, init_cache

    b, n = args.batch, args.new_tokens
    cfg = SamplerConfig(max_new_tokens=n, greedy=True, stop_token_ids=(),
                        prefill_dtype=args.dtype, decode_dtype=args.dtype)
    prompt = jnp.asarray(np.random.default_rng(0).integers(100, m.config.vocab_size,
                                                           (b, args.prompt_len)), jnp.int32)
    mask = jnp.ones(prompt.shape, bool)
    ids = jnp.asarray(np.arange(b) % 2, jnp.int32)  # a mixed-adapter batch
    fn = jax.jit(lambda base, lora, cache, pre: generate_with_cache(
        m.graphdef, base, lora, prompt, mask, ids, jax.random.key(0), 0.0, n, cache,
        config=cfg, prefill_base=pre), donate_argnums=(2,))
    pre = cast_params(m.base, args.dtype)
    cache = init_cache(m.config, b, args.prompt_len, cfg)
    for _ in range(2):  # compile, warm up
        out, cache = fn(m.base, m.lora, cache, pre)
        jax.block_until_ready(out)
    names = {}  # HLO instruction -> the JAX op it came from
    for line in fn.lower(m.base, m.lora, cache, pre).compile().as_text().splitlines():
        match = re.match(r"\s*%([\w.\-]+) = .*?op_name=\"([^\"]+)\"", line)
        if match:
            names[match.group(1)] = re.sub(r"^jit\([^)]*\)/", "", match.group(2))
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        t = time.perf_counter()
        out, cache = fn(m.base, m.lora, cache, pre)
        jax.block_until_ready(out)
        wall = time.perf_counter() - t
        jax.profiler.stop_trace()
        path = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
        data = _profile_data.ProfileData.from_file(path)
    per_op, calls, threads = collections.Counter(), collections.Counter(), set()
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name and "PjRtCpuClient" not in line.name:
                continue
            for event in line.events:
                if event.name.startswith(("ThunkExecutor", "Slinky", "Threadpool", "end:")):
                    continue
                threads.add(line.name)
                op = re.sub(r"\.\d+$", "", names.get(event.name, event.name))
                per_op[op] += event.duration_ns / 1e6
                calls[op] += 1
    busy = sum(per_op.values())
    workers = len([t for t in threads if "XLAEigen" in t]) or 1
    print(f"one generate call: batch {b}, prompt {args.prompt_len}, {n} new tokens (greedy), "
          f"wall {1e3 * wall:.0f} ms; thread time {busy:.0f} ms on {workers} pool threads "
          f"= {100 * busy / (workers * 1e3 * wall):.0f} % busy")
    print("  thread ms    calls  op ('while/body/...' = the decode loop)")
    for op, ms in per_op.most_common(25):
        print(f"  {ms:9.1f} {calls[op]:8d}  {op[:100]}")


def main():
    args = _args()
    from marft_jax.models.registry import resolve_model

    m = load_model(resolve_model("smollm2-135m-instruct").gguf_path, dtype="bfloat16",
                   lora=LoraConfig(num_adapters=2))
    if args.op_breakdown:
        op_breakdown(m, args)
        return
    base = cast_params(m.base, args.dtype)
    lora = cast_params(m.lora, args.dtype)
    cfg, b, s = m.config, args.batch, args.slots
    dtype = jnp.dtype(args.dtype)
    shape = (b, cfg.num_kv_heads, s, cfg.head_dim)
    cache = KVCache(tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
                    tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)))
    token = jnp.ones((b, 1), jnp.int32)
    positions = jnp.full((b, 1), s - 1, jnp.int32)
    valid = jnp.ones((b, s), bool)
    ids = jnp.zeros((b,), jnp.int32)
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(0), r))(jnp.arange(b))
    temps = jnp.full((b,), 0.5, jnp.float32)
    greedy_cfg = SamplerConfig(greedy=True)
    topk_cfg = SamplerConfig(top_k=50)

    @jax.jit
    def layers(base, lora, cache):
        return F.forward(m.graphdef, base, lora, token, positions, ids, valid, cache, s - 1)

    plain = load_model(resolve_model("smollm2-135m-instruct").gguf_path, dtype="bfloat16")

    @jax.jit
    def layers_nolora(base, lora, cache):
        return F.forward(plain.graphdef, base, lora, token, positions, ids, valid, cache, s - 1)

    @jax.jit
    def step(base, lora, cache):
        hidden, cache = F.forward(m.graphdef, base, lora, token, positions, ids, valid, cache,
                                  s - 1)
        logits = F.lm_logits(m.graphdef, base, lora, hidden)[:, 0]
        return D.draw(logits, keys, temps, topk_cfg), cache

    hidden = jnp.ones((b, 1, cfg.hidden_size), dtype)
    lm_head = jax.jit(lambda base, lora: F.lm_logits(m.graphdef, base, lora, hidden))
    logits = jax.random.normal(jax.random.key(1), (b, cfg.vocab_size), jnp.float32)
    draw_greedy = jax.jit(lambda x: D.draw(x, keys, temps, greedy_cfg))
    draw_topk = jax.jit(lambda x: D.draw(x, keys, temps, topk_cfg))

    kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(base)
               if x.ndim == 2 and "embed" not in jax.tree_util.keystr(path)]

    @jax.jit
    def matmul_floor(kernels):
        return sum(jnp.sum(jnp.ones((b, w.shape[0]), w.dtype) @ w,
                           dtype=jnp.float32) for w in kernels)

    nbytes = sum(w.size * w.dtype.itemsize for w in kernels)
    host = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(host)
    copy_ms = 1e3 * min(timed(lambda: np.copyto(dst, host)) for _ in range(5))
    embed_bytes = cfg.vocab_size * cfg.hidden_size * dtype.itemsize
    r = args.repeats
    rows = [
        ("step (top-k 50 draw)", median_ms(step, base, lora, cache, repeats=r)),
        ("layers", median_ms(layers, base, lora, cache, repeats=r)),
        ("layers_nolora", median_ms(layers_nolora, cast_params(plain.base, args.dtype),
                                     plain.lora, cache, repeats=r)),
        ("lm_head", median_ms(lm_head, base, lora, repeats=r)),
        ("draw greedy", median_ms(draw_greedy, logits, repeats=r)),
        ("draw top-k 50", median_ms(draw_topk, logits, repeats=r)),
        ("matmul_floor", median_ms(matmul_floor, kernels, repeats=r)),
        ("copy of layer weights", copy_ms),
    ]
    print(f"batch {b}, cache slots {s}, compute dtype {args.dtype}; layer weights "
          f"{nbytes / 1e6:.0f} MB, embedding {embed_bytes / 1e6:.0f} MB, "
          f"{len(kernels)} matrices")
    for name, ms in rows:
        print(f"  {name:24s} {ms:8.2f} ms")
    gb = lambda byte_count, ms: byte_count / ms / 1e6
    print(f"  layers read {gb(nbytes, rows[1][1]):.1f} GB/s, matmul_floor "
          f"{gb(nbytes, rows[6][1]):.1f} GB/s, lm_head {gb(embed_bytes, rows[3][1]):.1f} GB/s, "
          f"copy {2 * gb(nbytes, copy_ms):.1f} GB/s (read + write)")


if __name__ == "__main__":
    main()
