"""The pure, jittable generation core: a prefill, then a decode loop over a KV cache.

`generate` has no host code, so the multi-agent rollout can call it inside `jax.jit` or
`lax.scan`. Rows may mix adapters (`adapter_ids`), temperatures and token limits; all three
are traced. The prompt is `[batch, P]` with any padding pattern (left padding is the usual
one): RoPE positions count real tokens, and generated tokens go to cache slots P, P+1, ...
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx, struct

from marft_jax.models.config import DTYPES, ModelConfig
from marft_jax.models.decoder import KVCache
from marft_jax.models.functional import (forward, lm_logits, merge_adapter,
                                         positions_from_mask, prefix_forward)
from marft_jax.sampling import distributions as D
from marft_jax.sampling.types import Generation, SamplerConfig, SharedPrefix

Array = jax.Array


@struct.dataclass
class _State:
    """Decode-loop carry."""

    step: Array  # [] int32, output column of the token sampled last
    cache: KVCache
    last: Array  # [batch] int32, the token sampled last
    done: Array  # [batch] bool, row finished (stop token, limit, or never started)
    out: Generation


def model_config(graphdef, base, lora) -> ModelConfig:
    """The decoder's static ModelConfig (works on concrete and traced states)."""
    return nnx.merge(graphdef, base, lora).config


def cache_slots(prompt_len: int, config: SamplerConfig) -> int:
    """Cache slots `generate` needs: the prompt plus every generated token but the last."""
    return prompt_len + config.max_new_tokens - 1


def decode_chunks(config: SamplerConfig) -> tuple[int, ...]:
    """Slot counts of the generated tokens' cache segments, one decode phase each.

    `(N - 1,)` without `config.decode_chunk` (one phase over the whole cache); else chunks
    of `decode_chunk` slots, the last one shorter. Empty when N = 1 (no decode step).
    """
    steps = config.max_new_tokens - 1
    c = config.decode_chunk or max(steps, 1)
    return tuple(min(c, steps - start) for start in range(0, steps, c))


def init_cache(model_cfg: ModelConfig, batch: int, prompt_len: int,
               config: SamplerConfig) -> KVCache:
    """A zero cache for `generate_with_cache` (distinct buffers per leaf, safe to donate).

    With `config.decode_chunk` it is segmented: the prompt's P slots, then the chunks of
    `decode_chunks(config)`.
    """
    name = config.cache_dtype
    if name is None:
        name = "float32" if jax.default_backend() == "cpu" else (
            config.decode_dtype or model_cfg.dtype)
    segments = (prompt_len,) + decode_chunks(config) if config.decode_chunk else None
    return KVCache.zeros(model_cfg, batch, cache_slots(prompt_len, config), DTYPES[name],
                         segments)


def cast_params(tree, dtype_name: str | None):
    """Casts the floating leaves of `tree` to `dtype_name` (None: unchanged)."""
    if dtype_name is None:
        return tree
    dtype = DTYPES[dtype_name]
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def row_keys(key: Array, batch: int) -> Array:
    """Per-row typed keys `[batch]`: `fold_in(key, row)` for one key, or `key` if `[batch]`.

    Raw uint32 keys (`jax.random.PRNGKey`) are accepted and wrapped.
    """
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(batch))
    if key.shape != (batch,):
        raise ValueError(f"generate: key must be one key or one per row [{batch}], "
                         f"got shape {key.shape}")
    return key


def _sample(state: _State, logits: Array, keys: Array, temperatures: Array,
            max_new: Array, step: Array, config: SamplerConfig) -> _State:
    """Draws token `step` for every row from `logits` `[batch, vocab]` and records it."""
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
    tokens, logprobs = D.draw(logits, step_keys, temperatures, config)  # [batch] each
    active = ~state.done
    out = state.out
    col = lambda buf, value: jax.lax.dynamic_update_slice_in_dim(
        buf, value[:, None].astype(buf.dtype), step, axis=1)
    policy = out.policy_logprobs
    if policy is not None:
        policy = col(policy, jnp.where(active, D.policy_logprobs(logits, tokens), 0.0))
    out = Generation(
        tokens=col(out.tokens, jnp.where(active, tokens, config.pad_token_id)),
        mask=col(out.mask, active),
        logprobs=col(out.logprobs, jnp.where(active, logprobs, 0.0)),
        policy_logprobs=policy,
        lengths=out.lengths + active.astype(jnp.int32),
        prompt_features=out.prompt_features)
    stop = jnp.zeros_like(active)
    for stop_id in config.stop_token_ids:
        stop = stop | (tokens == stop_id)
    done = state.done | stop | (step + 1 >= max_new)
    return state.replace(step=step, last=tokens, done=done, out=out)


def generate_with_cache(graphdef, base: nnx.State, lora: nnx.State, prompt_tokens: Array,
                        prompt_mask: Array, adapter_ids: Array, key: Array,
                        temperatures: Array, max_new: Array, cache: KVCache, *,
                        config: SamplerConfig,
                        prefill_base: nnx.State | None = None,
                        prefix: SharedPrefix | None = None,
                        one_adapter: int | None = None) -> tuple[Generation, KVCache]:
    """`generate` over a caller-provided cache, returned for reuse (donate it under jit).

    The cache's slots must equal `cache_slots(P, config)` (P: the prompt width, plus the
    prefix's L with a `prefix`). Its old contents need not be zero: slots are masked until
    written, and masked attention weights are exactly 0.
    `prefill_base` is `base` already cast to `config.prefill_dtype` (a caller that keeps
    it across calls saves the cast of every weight on each call; the decode steps use it
    too when `decode_dtype == prefill_dtype`); None casts inside. `prefix`,
    `one_adapter`: see `generate`.
    """
    chex.assert_rank(prompt_tokens, 2)
    b, p = prompt_tokens.shape
    chex.assert_shape(prompt_mask, (b, p))
    prompt_mask = prompt_mask.astype(bool)
    if prefix is not None:
        chex.assert_shape(prefix.group, (b,))
        prompt_mask = jnp.concatenate([prefix.mask.astype(bool)[prefix.group], prompt_mask],
                                      axis=1)  # [batch, L + P]
        p = prefix.length + p
    n = config.max_new_tokens
    segmented = bool(config.decode_chunk)
    want = (p,) + decode_chunks(config) if segmented else (cache_slots(p, config),)
    if cache.segment_slots != want or cache.batch != b:
        raise ValueError(f"generate: cache holds {cache.batch} rows x "
                         f"{cache.segment_slots} slots; need {b} x {want}")
    chex.assert_type(prompt_tokens, int)
    adapter_ids = jnp.broadcast_to(jnp.asarray(adapter_ids, jnp.int32), (b,))
    temperatures = jnp.broadcast_to(jnp.asarray(temperatures, jnp.float32), (b,))
    max_new = jnp.minimum(jnp.broadcast_to(jnp.asarray(max_new, jnp.int32), (b,)), n)
    keys = row_keys(key, b)
    slots = cache.slots
    prompt_len = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)  # [batch]

    # Prefill: the whole prompt into a prompt-sized cache (attention over P slots, not the
    # P + N - 1 of the full cache), copied into the full cache afterwards.
    pre_base = cast_params(base, config.prefill_dtype) if prefill_base is None else prefill_base
    pre_lora = cast_params(lora, config.prefill_dtype)
    if prefix is not None:
        first = cache.keys[0][0] if segmented else cache.keys[0]
        group_hidden, hidden, prompt_cache = prefix_forward(
            graphdef, pre_base, pre_lora, prefix, prompt_tokens, prompt_mask, adapter_ids,
            first.dtype)
        hidden = jnp.concatenate([group_hidden[prefix.group], hidden], axis=1)  # [b, L+P, H]
    else:
        if segmented:  # the prompt segment is the prefill's cache (every slot is written)
            prompt_cache = KVCache(*(tuple(x[0] for x in leaves)
                                     for leaves in (cache.keys, cache.values)))
        else:
            prompt_cache = KVCache(*(tuple(jnp.zeros((*x.shape[:2], p, x.shape[3]), x.dtype)
                                           for x in leaves)
                                     for leaves in (cache.keys, cache.values)))
        hidden, prompt_cache = forward(graphdef, pre_base, pre_lora,
                                       prompt_tokens.astype(jnp.int32),
                                       positions_from_mask(prompt_mask), adapter_ids,
                                       prompt_mask, prompt_cache, 0)
    if segmented:
        put = lambda full, part: (part,) + full[1:]
    else:
        put = lambda full, part: jax.lax.dynamic_update_slice(full, part, (0, 0, 0, 0))
    cache = KVCache(tuple(map(put, cache.keys, prompt_cache.keys)),
                    tuple(map(put, cache.values, prompt_cache.values)))
    kv_valid = jnp.zeros((b, slots), bool).at[:, :p].set(prompt_mask)
    last_index = jnp.maximum(p - 1 - jnp.argmax(prompt_mask[:, ::-1], axis=1), 0)  # [batch]
    last_hidden = jnp.take_along_axis(hidden, last_index[:, None, None], axis=1)  # [b, 1, h]
    logits = lm_logits(graphdef, pre_base, pre_lora, last_hidden)[:, 0]  # [batch, vocab]

    zeros_f = jnp.zeros((b, n), jnp.float32)
    state = _State(
        step=jnp.zeros((), jnp.int32), cache=cache, last=jnp.zeros((b,), jnp.int32),
        done=max_new <= 0,
        out=Generation(tokens=jnp.full((b, n), config.pad_token_id, jnp.int32),
                       mask=jnp.zeros((b, n), bool), logprobs=zeros_f,
                       policy_logprobs=zeros_f if config.policy_logprobs else None,
                       lengths=jnp.zeros((b,), jnp.int32), prompt_features=last_hidden[:, 0]))
    state = _sample(state, logits, keys, temperatures, max_new, state.step, config)

    dec_ids = adapter_ids
    if one_adapter is not None and config.merge_adapter:
        # Every row runs one adapter: decode on weights with it merged in, no per-row LoRA.
        dec_base = cast_params(merge_adapter(graphdef, base, lora, one_adapter),
                               config.decode_dtype)
        dec_ids = None
    elif prefill_base is not None and config.decode_dtype == config.prefill_dtype:
        dec_base = prefill_base
    else:
        dec_base = cast_params(base, config.decode_dtype)
    dec_lora = cast_params(lora, config.decode_dtype)
    generated = jnp.arange(n - 1)  # [N - 1] cache slot offsets of generated tokens

    def step_fn(s: _State, end: int, view: tuple[int, int] | None) -> _State:
        # Feed token `s.step` (at slot p + s.step) and sample token `s.step + 1`; attend
        # over the prompt and the first `end` generated slots.
        if view is None:
            valid = kv_valid.at[:, p:].set(generated[None, :] <= s.step)  # [batch, slots]
        else:
            valid = jnp.concatenate([prompt_mask, jnp.broadcast_to(
                generated[None, :end] <= s.step, (b, end))], axis=1)  # [batch, p + end]
        positions = (prompt_len + s.step)[:, None]  # [batch, 1]
        hidden, cache = forward(graphdef, dec_base, dec_lora, s.last[:, None], positions,
                                dec_ids, valid, s.cache, p + s.step, cache_view=view)
        logits = lm_logits(graphdef, dec_base, dec_lora, hidden)[:, 0]  # [batch, vocab]
        return _sample(s.replace(cache=cache), logits, keys, temperatures, max_new,
                       s.step + 1, config)

    def running(s: _State) -> Array:
        return (s.step + 1 < n) & ~jnp.all(s.done)

    # One loop per phase: decode steps [start, end) attend over the prompt and the
    # generated slots before `end` (segments 1..j+1 of a segmented cache).
    if segmented:
        ends = [sum(decode_chunks(config)[:j + 1]) for j in range(len(decode_chunks(config)))]
        phases = [(end, (j + 1, j + 2)) for j, end in enumerate(ends)]
    else:
        phases = [(n - 1, None)]
    start = 0
    for end, view in phases:
        body = lambda s, end=end, view=view: step_fn(s, end, view)
        cond = running if view is None else (
            lambda s, end=end: running(s) & (s.step < end))
        if config.loop == "while":
            state = jax.lax.while_loop(cond, body, state)
        else:
            def scan_body(s, _, body=body, cond=cond):
                return jax.lax.cond(cond(s), body, lambda x: x, s), None

            state, _ = jax.lax.scan(scan_body, state, None, length=end - start,
                                    unroll=config.unroll)
        start = end
    return state.out, state.cache


def generate(graphdef, base: nnx.State, lora: nnx.State, prompt_tokens: Array,
             prompt_mask: Array, adapter_ids: Array, key: Array, temperatures: Array,
             max_new: Array, *, config: SamplerConfig,
             prefix: SharedPrefix | None = None,
             one_adapter: int | None = None) -> Generation:
    """Samples up to `config.max_new_tokens` tokens per row; pure and jittable.

    Args:
        graphdef, base, lora: the split decoder (`functional.split_model`).
        prompt_tokens: `[batch, P]` int32 prompt ids (padding anywhere, usually left).
        prompt_mask: `[batch, P]` bool, true for real prompt tokens.
        adapter_ids: `[batch]` int32 adapter per row (< 0: base model), or a scalar.
        key: one PRNG key (row r uses `fold_in(key, r)`) or `[batch]` per-row keys; step t
            of a row uses `fold_in(row_key, t)`, so a row's tokens do not depend on the
            other rows of the batch.
        temperatures: `[batch]` float32 per-row temperature (<= 0: greedy), or a scalar.
        max_new: `[batch]` int32 per-row token limit (clipped to `config.max_new_tokens`;
            <= 0: the row generates nothing), or a scalar.
        config: static settings.
        prefix: a `SharedPrefix` of groups of rows (their prompts are `prefix ; prompt`),
            prefilled once per group and broadcast to its rows: the same generation as
            the concatenated prompts (up to float rounding), with a prefill of
            `G x L + batch x P` tokens instead of `batch x (L + P)`. None: no prefix.
        one_adapter: the adapter of every row when the caller knows it while tracing (a
            Python int equal to every `adapter_ids` entry), else None. With
            `config.merge_adapter` the decode steps then run on the base weights with that
            adapter merged in (`models.functional.merge_adapter`, once per call) instead
            of applying LoRA per row: the same tokens up to float rounding, and a cheaper
            step (SmolLM2's rollout at batch 16 on a CPU: -6 % with LoRA on all seven
            projections, no measurable change with q/v only; BUILD_NOTES.md).

    Returns:
        A `Generation` with `[batch, config.max_new_tokens]` fields.
    """
    cfg = model_config(graphdef, base, lora)
    p = prompt_tokens.shape[1] + (0 if prefix is None else prefix.length)
    cache = init_cache(cfg, prompt_tokens.shape[0], p, config)
    out, _ = generate_with_cache(graphdef, base, lora, prompt_tokens, prompt_mask,
                                 adapter_ids, key, temperatures, max_new, cache,
                                 config=config, prefix=prefix, one_adapter=one_adapter)
    return out
