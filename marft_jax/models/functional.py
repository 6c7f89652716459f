"""Pure functions over the decoder's split state `(graphdef, base, lora)`.

The NNX decoder is split once; everything that runs hot takes the states as arguments and
merges inside, so params are never closed over and `base` is never differentiated unless a
caller asks for it. Adapter selection is data (`adapter_ids`), so switching agents never
recompiles.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from marft_jax.models.config import LoraConfig, ModelConfig
from marft_jax.models.decoder import Decoder, KVCache
from marft_jax.models.layers import LoRALinear

Array = jax.Array
BASE_FILTER = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def split_model(model: Decoder) -> tuple[Any, nnx.State, nnx.State]:
    """Splits a decoder into `(graphdef, base, lora)`; `lora` is empty without adapters."""
    graphdef, base, lora = nnx.split(model, BASE_FILTER, nnx.LoRAParam)
    return graphdef, base, lora


def merge_model(graphdef, base: nnx.State, lora: nnx.State) -> Decoder:
    """Inverse of `split_model`."""
    return nnx.merge(graphdef, base, lora)


def abstract_model(config: ModelConfig, lora: LoraConfig | None = None):
    """`(graphdef, base, lora)` with `jax.ShapeDtypeStruct` leaves; allocates nothing."""
    model = nnx.eval_shape(lambda: Decoder(config, lora, rngs=nnx.Rngs(0)))
    return split_model(model)


def init_model(config: ModelConfig, lora: LoraConfig | None = None, seed: int = 0,
               *, with_base: bool = True):
    """Randomly initialised `(graphdef, base, lora)`.

    With `with_base=False` only the LoRA state is materialised (base is None): the whole
    init runs under jit and XLA drops the unused base initialisation, so a pretrained base
    can be loaded separately without a wasted full-size random init.
    """
    graphdef = abstract_model(config, lora)[0]

    @jax.jit
    def make():
        _, base, lora_state = split_model(Decoder(config, lora, rngs=nnx.Rngs(seed)))
        return (base if with_base else None), lora_state

    base, lora_state = make()
    return graphdef, base, lora_state


def positions_from_mask(mask: Array) -> Array:
    """RoPE positions `[batch, tokens]` for left-padded rows: index among real tokens."""
    mask = mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


def forward(graphdef, base: nnx.State, lora: nnx.State, tokens: Array, positions: Array,
            adapter_ids: Array, kv_valid: Array, cache: KVCache | None = None,
            write_index: Array | int = 0, remat: str = "none",
            cache_view: tuple[int, int] | None = None) -> tuple[Array, KVCache | None]:
    """Decoder forward; returns `(hidden [batch, tokens, hidden], new cache)`.

    See `Decoder.__call__` for the arguments (`remat`: `models.remat.REMAT_POLICIES`;
    `cache_view`: the write and visible segments of a segmented cache).
    """
    model = merge_model(graphdef, base, lora)
    return model(tokens, positions, adapter_ids, kv_valid, cache, write_index, remat,
                 cache_view)


def prefix_forward(graphdef, base: nnx.State, lora: nnx.State, prefix, tokens: Array,
                   mask: Array, adapter_ids: Array, dtype=None, remat: str = "none"
                   ) -> tuple[Array, Array, KVCache]:
    """Forward of `[prefix ; row]` rows that runs each group's prefix once.

    Each group's prefix runs once (with its adapter) into a `[G, kv_heads, L, head_dim]`
    cache; its keys and values are gathered to the rows, and the rows' own tokens run
    after them (`write_index = L`, RoPE positions counting the prefix's real tokens). The
    gather and the cache writes are differentiable, so gradients reach the adapters
    through the single prefix pass.

    Args:
        prefix: a `sampling.SharedPrefix` (`tokens [G, L]`, `mask [G, L]`,
            `adapter_ids [G]`, `group [batch]`).
        tokens: `[batch, P]` the rows' own tokens.
        mask: `[batch, L + P]` the rows' full masks (prefix columns first).
        adapter_ids: `[batch]` adapter of each row (its group's).
        dtype: the cache's storage dtype; None: the model's (differentiable: a
            `decoder.BF16_BITS` cache is not).
        remat: both passes' rematerialisation (`models.remat.REMAT_POLICIES`).

    Returns:
        `(prefix hidden [G, L, H], row hidden [batch, P, H], the rows' cache with
        L + P slots)`.
    """
    g, l = prefix.tokens.shape
    b, p = tokens.shape
    cfg = merge_model(graphdef, base, lora).config
    dtype = cfg.jnp_dtype if dtype is None else dtype
    zeros = lambda rows, slots: jnp.zeros((rows, cfg.num_kv_heads, slots, cfg.head_dim), dtype)
    layers = range(cfg.num_layers)
    group_cache = KVCache(*(tuple(zeros(g, l) for _ in layers) for _ in range(2)))
    prefix_mask = prefix.mask.astype(bool)
    group_hidden, group_cache = forward(  # [G, L, H]: each prefix once
        graphdef, base, lora, prefix.tokens.astype(jnp.int32),
        positions_from_mask(prefix_mask), prefix.adapter_ids, prefix_mask, group_cache, 0,
        remat)
    # Broadcast to the rows: [batch, kv_heads, L + P, head_dim], prefix slots filled.
    rows = lambda x: jnp.concatenate([x[prefix.group], zeros(b, p)], axis=2)
    row_cache = KVCache(tuple(map(rows, group_cache.keys)),
                        tuple(map(rows, group_cache.values)))
    positions = positions_from_mask(mask)[:, l:]  # [batch, P], counting the prefix
    hidden, row_cache = forward(graphdef, base, lora, tokens.astype(jnp.int32), positions,
                                adapter_ids, mask, row_cache, l, remat)
    return group_hidden, hidden, row_cache


def merge_adapter(graphdef, base: nnx.State, lora: nnx.State, adapter: int) -> nnx.State:
    """`base` with adapter `adapter` folded into every kernel it targets (pure, jittable).

    Each LoRA kernel becomes `W + scale · A[adapter] B[adapter]` (`LoRALinear.
    merged_kernel`). A forward over these weights with `adapter_ids=None` (no per-row LoRA)
    computes what rows of that adapter compute with the adapter applied per row, up to
    float rounding (exactly while its B is zero). `adapter < 0` (`BASE_ADAPTER`): `base`.
    """
    if adapter < 0:
        return base
    # New containers over the same arrays: the model's variables are the state's own, so
    # assigning to `base`'s would change the caller's state.
    model = merge_model(graphdef, jax.tree.map(lambda x: x, base), lora)
    # `set_value`, not `kernel[...] = ...`: the indexed form compares the new value's
    # sharding with the old one's, and a tracer's sharding builds an error message by
    # walking the whole trace so far (24 of 30 s of tracing a SmolLM2 rollout).
    for _, module in nnx.iter_graph(model):
        if isinstance(module, LoRALinear) and module.lora_a is not None:
            module.kernel.set_value(module.merged_kernel(adapter))
    return split_model(model)[1]


def lm_logits(graphdef, base: nnx.State, lora: nnx.State, hidden: Array) -> Array:
    """LM head over `hidden` `[..., hidden]` -> float32 logits `[..., vocab]`."""
    return merge_model(graphdef, base, lora).logits(hidden)


def sequence_logits(graphdef, base: nnx.State, lora: nnx.State, tokens: Array, mask: Array,
                    adapter_ids: Array | int) -> Array:
    """Full forward without a cache: logits `[batch, tokens, vocab]` for left-padded rows.

    Args:
        tokens: `[batch, tokens]` int32.
        mask: `[batch, tokens]` 1 for real tokens, 0 for padding.
        adapter_ids: `[batch]` or scalar adapter index (< 0 = base model).
    """
    model = merge_model(graphdef, base, lora)
    mask = mask.astype(bool)
    hidden, _ = model(tokens, positions_from_mask(mask), adapter_ids, mask)
    return model.logits(hidden)
