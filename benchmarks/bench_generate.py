"""Generation throughput: our sampler against transformers' PyTorch `generate`.

Both sides get the same weights, prompts (random ids, no padding), thread count (the
process is pinned to `--threads` cores and torch uses that many threads) and exactly the
requested number of new tokens (no EOS stopping: transformers gets `min_new_tokens`, ours
no stop ids). Each case alternates ours / transformers `--repeats` times and reports medians
of new tokens per second (prefill included), their ratio, our prefill time and per-step
decode time, and our decode's achieved memory bandwidth (weight + KV-cache bytes read per
step / step time) next to a large numpy copy's bandwidth measured in the same run.

    .venv/bin/python benchmarks/bench_generate.py --batches=8,32 --new_tokens=64 \
        --out=runs/bench_generate.json

Our runs also record the process's CPU time (all threads; `time.process_time`), which on a
machine shared with other work is steadier than wall time (medians printed as "CPU time").

Sampler variants (`--decode_dtypes`, `--decode_chunks`, `--cache_dtypes`: every
combination) run side by side in the same alternation, e.g. `--decode_chunks=0,64
--cache_dtypes=float32,bfloat16 --skip_hf`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2,tiny",
                   help="comma list: smollm2 (its GGUF weights), tiny, smollm2_shape, "
                        "llama1b (random weights of these shapes, RANDOM_LLAMAS)")
    p.add_argument("--batches", default="8,32")
    p.add_argument("--new_tokens", default="64,256")
    p.add_argument("--modes", default="greedy,sampled", help="greedy, sampled (T=0.5, k=50)")
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--dtype", default="bfloat16", help="our weight storage dtype")
    p.add_argument("--prefill_dtype", default="float32", help="ours; 'none' = storage dtype")
    p.add_argument("--decode_dtypes", default="float32",
                   help="ours, each run side by side; 'none' = storage dtype")
    p.add_argument("--decode_chunks", default="0",
                   help="ours, each run side by side: SamplerConfig.decode_chunk (0 = off)")
    p.add_argument("--cache_dtypes", default="none",
                   help="ours, each run side by side: SamplerConfig.cache_dtype ('none' = "
                        "the default, float32 on CPU)")
    p.add_argument("--shared_prefix", type=int, default=0,
                   help="rows share their first L prompt tokens; ours runs each sampler "
                        "config with that prefix prefilled once (prefix=on) and without "
                        "(prefix=off), both as a jitted `generate` (0 = off)")
    p.add_argument("--loop", default="while", choices=("while", "scan"))
    p.add_argument("--hf_dtypes", default="bfloat16,float32",
                   help="transformers dtypes to run (the fastest is the baseline)")
    p.add_argument("--skip_hf", action="store_true", help="only our sampler")
    p.add_argument("--hf_device", default="cpu", help="torch device of transformers' runs "
                   "(a GPU: cuda; ours run on JAX's default device)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    return p.parse_args()


ARGS = _args()
# Pin before jax / torch start their thread pools, so both use the same cores.
if hasattr(os, "sched_setaffinity") and ARGS.threads < os.cpu_count():
    os.sched_setaffinity(0, set(range(ARGS.threads)))

import jax  # noqa: E402

from marft_jax.models.config import LoraConfig  # noqa: E402
from marft_jax.models.weights import load_model  # noqa: E402
from marft_jax.sampling import Sampler, SamplerConfig  # noqa: E402
from marft_jax.timing import timed  # noqa: E402

TOP_K, TEMPERATURE = 50, 0.5


def copy_bandwidth(nbytes=512 * 2**20, repeats=5) -> float:
    """GB/s of a large numpy copy, counting bytes read plus bytes written."""
    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = min(timed(lambda: np.copyto(b, a)) for _ in range(repeats))
    return 2 * a.nbytes / best / 1e9


def _none(name):
    return None if name in ("", "none", "None") else name


# ------------------------------------------------------------------------------ models

# Random-weight Llamas (transformers.LlamaConfig fields): a tiny one, SmolLM2-135M's shapes
# and a ~1.1B one (TinyLlama's shapes) for accelerators.
RANDOM_LLAMAS = {
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                 tie_word_embeddings=True),
    "smollm2_shape": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                          num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          max_position_embeddings=8192, tie_word_embeddings=True),
    "llama1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                    num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                    max_position_embeddings=2048, tie_word_embeddings=False),
}


def random_checkpoint(directory: str, name: str = "tiny"):
    """A random-weight Llama of `RANDOM_LLAMAS[name]`'s shapes saved for both frameworks."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(**RANDOM_LLAMAS[name])
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(directory)
    return directory


def load_ours(name: str, path: str):
    loaded = load_model(path, dtype=ARGS.dtype, lora=LoraConfig(num_adapters=2))
    return loaded


def load_hf(name: str, path: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    if name == "smollm2":
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.to(device=ARGS.hf_device, dtype=getattr(torch, dtype)).eval()


# ------------------------------------------------------------------------------ runners

def run_ours(sampler: Sampler, loaded, tokens, mode: str, new: int, key: int):
    temps = 0.0 if mode == "greedy" else TEMPERATURE
    gen = sampler(loaded.base, loaded.lora, (tokens, np.ones_like(tokens, bool)), 0,
                  jax.random.key(key), temps, new)
    jax.block_until_ready(gen.tokens)
    assert int(np.asarray(gen.lengths).min()) == new
    return gen


class PrefixRunner:
    """`Sampler`'s call signature over a jitted `generate` whose rows share their first
    `length` prompt tokens: with `shared`, that prefix is prefilled once (`SharedPrefix`),
    else every row prefills its whole prompt (the same jitted path, for a fair "off")."""

    def __init__(self, graphdef, config: SamplerConfig, length: int, shared: bool):
        from marft_jax.sampling import generate

        self.graphdef, self.config, self.length, self.shared = graphdef, config, length, shared
        self.fn = jax.jit(generate, static_argnums=0, static_argnames="config")

    def __call__(self, base, lora, prompts, adapter, key, temps, new):
        from marft_jax.sampling import SharedPrefix

        tokens, mask = (np.asarray(x) for x in prompts)
        b, l = tokens.shape[0], self.length
        prefix = None
        if self.shared:
            assert (tokens[:, :l] == tokens[:1, :l]).all()
            prefix = SharedPrefix(tokens=tokens[:1, :l], mask=mask[:1, :l],
                                  adapter_ids=np.full((1,), adapter, np.int32),
                                  group=np.zeros((b,), np.int32))
            tokens, mask = tokens[:, l:], mask[:, l:]
        return self.fn(self.graphdef, base, lora, tokens, mask, np.int32(adapter), key,
                       np.float32(temps), np.int32(new), config=self.config, prefix=prefix)


def run_hf(model, tokens, mode: str, new: int):
    import torch

    kw = dict(do_sample=False) if mode == "greedy" else dict(
        do_sample=True, temperature=TEMPERATURE, top_k=TOP_K, top_p=1.0)
    device = ARGS.hf_device
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor(tokens, dtype=torch.long, device=device),
            attention_mask=torch.ones(tokens.shape, dtype=torch.long, device=device),
            max_new_tokens=new, min_new_tokens=new, pad_token_id=0, **kw)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    assert out.shape[1] == tokens.shape[1] + new


def decode_bytes_per_step(loaded, batch: int, config: SamplerConfig) -> float:
    """Weight bytes plus KV-cache bytes one decode step reads (mean over the steps: with
    `decode_chunk` a step reads the prompt's slots and its phase's filled chunks)."""
    from marft_jax.sampling.generate import decode_chunks

    cfg = loaded.config
    item = 2 if (config.decode_dtype or cfg.dtype) == "bfloat16" else 4
    kv_item = 2 if config.cache_dtype == "bfloat16" else 4
    weights = sum(x.size for x in jax.tree.leaves(loaded.base)) * item
    lora = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(loaded.lora))
    chunks = decode_chunks(config)
    ends = np.cumsum(chunks)
    slots = ARGS.prompt_len + np.mean(np.repeat(ends, chunks)) if chunks else ARGS.prompt_len
    kv = batch * cfg.num_layers * 2 * cfg.num_kv_heads * slots * cfg.head_dim * kv_item
    return weights + lora + kv


def bench_model(name: str, path: str, results: list, bandwidth: float):
    loaded = load_ours(name, path)
    hf_models = {} if ARGS.skip_hf else {d: load_hf(name, path, d)
                                          for d in ARGS.hf_dtypes.split(",")}
    rng = np.random.default_rng(0)
    vocab = loaded.config.vocab_size
    for batch in map(int, ARGS.batches.split(",")):
        tokens = rng.integers(3, vocab, (batch, ARGS.prompt_len)).astype(np.int32)
        for new in map(int, ARGS.new_tokens.split(",")):
            for mode in ARGS.modes.split(","):
                row = dict(model=name, batch=batch, new_tokens=new, mode=mode,
                           prompt_len=ARGS.prompt_len, copy_gb_s=bandwidth, ours={}, hf={})
                samplers, configs = {}, {}
                for decode, chunk, cache in itertools.product(
                        ARGS.decode_dtypes.split(","), map(int, ARGS.decode_chunks.split(",")),
                        ARGS.cache_dtypes.split(",")):
                    config = SamplerConfig(
                        max_new_tokens=new, top_k=TOP_K, greedy=mode == "greedy",
                        stop_token_ids=(), pad_token_id=0, loop=ARGS.loop,
                        prefill_dtype=_none(ARGS.prefill_dtype), decode_dtype=_none(decode),
                        cache_dtype=_none(cache), decode_chunk=chunk)
                    decode = f"{decode}/chunk={chunk}/cache={cache}"
                    configs[decode] = config
                    buckets = dict(batch_buckets=(batch,), prompt_buckets=(ARGS.prompt_len,))
                    if ARGS.shared_prefix:
                        tokens[:, :ARGS.shared_prefix] = tokens[0, :ARGS.shared_prefix]
                        configs[decode + "/prefix=on"] = configs.pop(decode)
                        configs[decode + "/prefix=off"] = config
                        for shared in ("on", "off"):
                            samplers[f"{decode}/prefix={shared}"] = tuple(
                                PrefixRunner(loaded.graphdef, c, ARGS.shared_prefix,
                                             shared == "on")
                                for c in (config, config.replace(max_new_tokens=1)))
                    else:
                        samplers[decode] = (Sampler(loaded.graphdef, config, **buckets),
                                            Sampler(loaded.graphdef,
                                                    config.replace(max_new_tokens=1),
                                                    **buckets))
                for decode in samplers:
                    t0 = time.perf_counter()
                    run_ours(samplers[decode][0], loaded, tokens, mode, new, 0)
                    run_ours(samplers[decode][1], loaded, tokens, mode, 1, 0)
                    row["ours"][decode] = dict(compile_s=time.perf_counter() - t0, total=[],
                                               prefill=[])
                for dtype, model in hf_models.items():  # warm-up at full size
                    row["hf"][dtype] = dict(warmup_s=timed(
                        lambda: run_hf(model, tokens, mode, new)), total=[])
                for rep in range(ARGS.repeats):
                    for decode, (full, first) in samplers.items():
                        times = row["ours"][decode]
                        cpu0 = time.process_time()
                        times["total"].append(timed(
                            lambda: run_ours(full, loaded, tokens, mode, new, rep + 1)))
                        cpu1 = time.process_time()
                        times["prefill"].append(timed(
                            lambda: run_ours(first, loaded, tokens, mode, 1, rep + 1)))
                        times.setdefault("total_cpu", []).append(cpu1 - cpu0)
                        times.setdefault("prefill_cpu", []).append(time.process_time() - cpu1)
                    for dtype, model in hf_models.items():
                        row["hf"][dtype]["total"].append(
                            timed(lambda: run_hf(model, tokens, mode, new)))
                for decode, times in row["ours"].items():
                    t_ours, t_pre = np.median(times["total"]), np.median(times["prefill"])
                    step = (t_ours - t_pre) / max(new - 1, 1)
                    gb_s = decode_bytes_per_step(loaded, batch, configs[decode]) / step / 1e9
                    c_ours, c_pre = np.median(times["total_cpu"]), np.median(times["prefill_cpu"])
                    times.update(cpu_s=c_ours, prefill_cpu_s=c_pre,
                                 decode_step_cpu_ms=1e3 * (c_ours - c_pre) / max(new - 1, 1))
                    times.update(tok_s=batch * new / t_ours, prefill_s=t_pre,
                                 tok_s_fastest=batch * new / min(times["total"]),
                                 decode_step_ms=1e3 * step, decode_gb_s=gb_s,
                                 decode_fraction_of_copy_bw=gb_s / bandwidth)
                for dtype, times in row["hf"].items():
                    times["tok_s"] = batch * new / np.median(times["total"])
                    times["tok_s_fastest"] = batch * new / min(times["total"])
                best = max(row["ours"], key=lambda d: row["ours"][d]["tok_s"])
                row.update(ours_best=best, ours_tok_s=row["ours"][best]["tok_s"])
                if row["hf"]:
                    row["hf_best_tok_s"] = max(t["tok_s"] for t in row["hf"].values())
                    row["ratio"] = row["ours_tok_s"] / row["hf_best_tok_s"]
                    # Fastest single run of each side: least disturbed by other processes.
                    row["ratio_fastest_runs"] = (
                        max(t["tok_s_fastest"] for t in row["ours"].values())
                        / max(t["tok_s_fastest"] for t in row["hf"].values()))
                results.append(row)
                print(_format(row), flush=True)


def _format(row: dict) -> str:
    head = (f"{row['model']:8s} b={row['batch']:<3d} new={row['new_tokens']:<4d} "
            f"{row['mode']:8s}")
    lines = []
    for decode, t in row["ours"].items():
        lines.append(
            f"{head} ours[decode={decode}] {t['tok_s']:7.1f} tok/s (fastest run "
            f"{t['tok_s_fastest']:.1f}; prefill "
            f"{t['prefill_s']:.2f} s, decode {t['decode_step_ms']:.1f} ms/step, "
            f"{t['decode_gb_s']:.1f} GB/s = {100 * t['decode_fraction_of_copy_bw']:.0f}% of copy)"
            f"; CPU time: {t['cpu_s']:.2f} s a call, prefill {t['prefill_cpu_s']:.2f} s, "
            f"decode {t['decode_step_cpu_ms']:.1f} ms/step")
    for dtype, t in row["hf"].items():
        lines.append(f"{head} hf[{dtype}] {t['tok_s']:7.1f} tok/s (fastest run "
                     f"{t['tok_s_fastest']:.1f})")
    if "ratio" in row:
        lines.append(f"{head} ratio best ours / best hf = {row['ratio']:.2f}x (medians), "
                     f"{row['ratio_fastest_runs']:.2f}x (fastest runs)")
    return "\n".join(lines)


def main():
    import torch

    torch.set_num_threads(ARGS.threads)
    bandwidth = copy_bandwidth()
    meta = dict(
        command=" ".join([os.path.basename(sys.executable)] + sys.argv),
        date=subprocess.run(["date"], capture_output=True, text=True).stdout.strip(),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        threads=ARGS.threads, jax=jax.__version__, torch=torch.__version__,
        device=jax.devices()[0].device_kind, hf_device=ARGS.hf_device,
        xla_flags=os.environ.get("XLA_FLAGS", ""), copy_gb_s=bandwidth,
        ours=dict(dtype=ARGS.dtype, prefill_dtype=ARGS.prefill_dtype,
                  decode_dtypes=ARGS.decode_dtypes, decode_chunks=ARGS.decode_chunks,
                  cache_dtypes=ARGS.cache_dtypes, shared_prefix=ARGS.shared_prefix,
                  loop=ARGS.loop))
    print(json.dumps(meta), flush=True)
    results: list[dict] = []
    for name in ARGS.models.split(","):
        if name == "smollm2":
            from marft_jax.models.registry import resolve_model

            bench_model(name, resolve_model("smollm2-135m-instruct").gguf_path, results,
                        bandwidth)
        elif name in RANDOM_LLAMAS:
            with tempfile.TemporaryDirectory() as d:
                bench_model(name, random_checkpoint(d, name), results, bandwidth)
        else:
            raise SystemExit(f"--models: unknown model {name!r} (smollm2, "
                             f"{', '.join(RANDOM_LLAMAS)})")
    if ARGS.out:
        with open(ARGS.out, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)


if __name__ == "__main__":
    main()
