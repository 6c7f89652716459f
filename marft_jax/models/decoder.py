"""Flax NNX decoder for the Llama and Qwen2 families with stacked per-agent LoRA.

Parameter names follow Hugging Face's module names (`layers[i].self_attn.q_proj.kernel`), so
the weight import is a transpose and a rename. The key/value cache is a plain pytree
(`KVCache`) passed in and returned, so a jitted sampler can donate it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from marft_jax.models.config import LoraConfig, ModelConfig
from marft_jax.models.layers import LoRALinear, RMSNorm, apply_rope, rope_inverse_frequencies
from marft_jax.models.remat import scan_layers

Array = jax.Array


@struct.dataclass
class KVCache:
    """Keys and values of every layer, one entry per cache slot.

    Heads come before slots so that attention reads the cache in place (no per-step
    transpose of the whole cache).

    A layer's entry is one array, or a tuple of arrays ("segments") that together hold
    the slots in order: a segmented cache lets a decode step attend over a prefix of whole
    segments (the filled ones) without slicing, which XLA:CPU would copy (see
    `sampling.SamplerConfig.decode_chunk`). A bfloat16 cache is stored as its uint16 bit
    pattern (`BF16_BITS`): XLA:CPU writes a uint16 slot in place but copies the whole
    array on a bfloat16 dynamic-update-slice.

    Attributes:
        keys: per layer `[batch, kv_heads, slots, head_dim]` (or a tuple of segments).
        values: per layer `[batch, kv_heads, slots, head_dim]` (or a tuple of segments).
    """

    keys: tuple[Array | tuple[Array, ...], ...]
    values: tuple[Array | tuple[Array, ...], ...]

    @classmethod
    def zeros(cls, config: ModelConfig, batch: int, slots: int, dtype=None,
              segments: tuple[int, ...] | None = None) -> "KVCache":
        """A zero cache (distinct buffers per leaf); `dtype` defaults to the model's.

        `segments`: slot counts of the segments (summing to `slots`), None for one array.
        """
        dtype = jnp.dtype(config.jnp_dtype if dtype is None else dtype)
        if dtype == jnp.bfloat16:
            dtype = BF16_BITS
        shape = lambda n: (batch, config.num_kv_heads, n, config.head_dim)
        if segments is None:
            entry = lambda: jnp.zeros(shape(slots), dtype)
        else:
            if sum(segments) != slots:
                raise ValueError(f"KVCache: segments {segments} do not sum to {slots} slots")
            entry = lambda: tuple(jnp.zeros(shape(n), dtype) for n in segments)
        make = lambda: tuple(entry() for _ in range(config.num_layers))
        return cls(keys=make(), values=make())

    @property
    def segment_slots(self) -> tuple[int, ...]:
        """Slot counts of a layer's segments (one entry for an unsegmented cache)."""
        return tuple(x.shape[2] for x in _segments(self.keys[0]))

    @property
    def slots(self) -> int:
        return sum(self.segment_slots)

    @property
    def batch(self) -> int:
        return _segments(self.keys[0])[0].shape[0]


# The storage dtype of a bfloat16 cache: its bit pattern (see `KVCache`).
BF16_BITS = jnp.uint16


def _segments(entry) -> tuple[Array, ...]:
    return entry if isinstance(entry, tuple) else (entry,)


def _read(cache: Array) -> Array:
    """A cache array as the dtype attention computes in (bfloat16 for `BF16_BITS`)."""
    if cache.dtype == BF16_BITS:
        return jax.lax.bitcast_convert_type(cache, jnp.bfloat16)
    return cache


def _write_slots(cache: Array, new: Array, write_index: Array) -> Array:
    """Writes `new` `[batch, kv_heads, tokens, head_dim]` into `cache` at slot `write_index`.

    Note: XLA's CPU backend upcasts a bfloat16 dynamic-update-slice to float32, which
    copies the whole cache on every call instead of writing one slot in place; on CPU a
    float32 cache avoids that (see `sampling.SamplerConfig.cache_dtype`).
    """
    zero = jnp.zeros((), jnp.int32)
    idx = (zero, zero, write_index.astype(jnp.int32), zero)
    if cache.dtype == BF16_BITS:
        new = jax.lax.bitcast_convert_type(new.astype(jnp.bfloat16), BF16_BITS)
    return jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype), idx)


def _lora_for(name: str, lora: LoraConfig | None) -> LoraConfig | None:
    return lora if lora is not None and name in lora.targets else None


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary embeddings and an optional cache."""

    def __init__(self, config: ModelConfig, lora: LoraConfig | None, rngs: nnx.Rngs):
        c = config
        self.config = c
        d, hd = c.hidden_size, c.head_dim
        kw = dict(dtype=c.jnp_dtype, init_std=c.initializer_range, rngs=rngs)
        self.q_proj = LoRALinear(d, c.num_heads * hd, use_bias=c.attention_bias,
                                 lora=_lora_for("q_proj", lora), **kw)
        self.k_proj = LoRALinear(d, c.num_kv_heads * hd, use_bias=c.attention_bias,
                                 lora=_lora_for("k_proj", lora), **kw)
        self.v_proj = LoRALinear(d, c.num_kv_heads * hd, use_bias=c.attention_bias,
                                 lora=_lora_for("v_proj", lora), **kw)
        self.o_proj = LoRALinear(c.num_heads * hd, d, use_bias=False,
                                 lora=_lora_for("o_proj", lora), **kw)

    def __call__(self, x: Array, positions: Array, adapter_ids: Array, kv_valid: Array,
                 write_index: Array, cache_kv: tuple | None,
                 cache_view: tuple[int, int] | None = None):
        """Attends from `x` `[batch, tokens, hidden]` to the cache slots.

        Args:
            x: `[batch, tokens, hidden]` inputs.
            positions: `[batch, tokens]` RoPE positions.
            adapter_ids: `[batch]` adapter index per row (< 0: none).
            kv_valid: `[batch, slots]` bool, which key slots hold real tokens (after this
                call's tokens are written); without a cache, slots = tokens. With
                `cache_view`, slots = those of the visible segments.
            write_index: scalar int, the (absolute) slot of this call's first token.
            cache_kv: this layer's `(keys, values)` (arrays or tuples of segments) or None.
            cache_view: static `(write segment, visible segments)` of a segmented cache:
                this call's tokens go into the write segment (which must hold them), and
                attention reads the first `visible segments` only. None: segment 0, all.

        Returns:
            `([batch, tokens, hidden], new (keys, values) or None)`.
        """
        c = self.config
        b, t, _ = x.shape
        q = self.q_proj(x, adapter_ids).reshape(b, t, c.num_heads, c.head_dim)
        k = self.k_proj(x, adapter_ids).reshape(b, t, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x, adapter_ids).reshape(b, t, c.num_kv_heads, c.head_dim)
        inv_freq = rope_inverse_frequencies(c.head_dim, c.rope)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq).transpose(0, 2, 1, 3)  # [batch, kv, tokens, hd]
        v = v.transpose(0, 2, 1, 3)  # [batch, kv_heads, tokens, head_dim]
        if cache_kv is not None:
            segmented = isinstance(cache_kv[0], tuple)
            ks, vs = _segments(cache_kv[0]), _segments(cache_kv[1])
            seg, visible = cache_view if cache_view is not None else (0, len(ks))
            local = write_index - sum(x.shape[2] for x in ks[:seg])
            ks = ks[:seg] + (_write_slots(ks[seg], k, local),) + ks[seg + 1:]
            vs = vs[:seg] + (_write_slots(vs[seg], v, local),) + vs[seg + 1:]
            new_kv = (ks, vs) if segmented else (ks[0], vs[0])
            k_parts = tuple(map(_read, ks[:visible]))
            v_parts = tuple(map(_read, vs[:visible]))
        else:
            new_kv = None
            k_parts, v_parts = (k,), (v,)
        widths = [x.shape[2] for x in k_parts]
        slots = sum(widths)
        q_slot = write_index + jnp.arange(t)  # [tokens]
        causal = jnp.arange(slots)[None, :] <= q_slot[:, None]  # [tokens, slots]
        mask = causal[None] & kv_valid[:, None, :]  # [batch, tokens, slots]
        groups = c.num_heads // c.num_kv_heads
        # Attention runs in the cache's dtype, so the cache is read as it is, never converted.
        # [batch, kv_heads, groups * tokens, head_dim]: one batched matmul per (row, kv head).
        q = q.reshape(b, t, c.num_kv_heads, groups, c.head_dim).transpose(0, 2, 3, 1, 4)
        # A segmented cache: one matmul per visible segment (whole arrays, never sliced).
        q = q.reshape(b, c.num_kv_heads, groups * t, c.head_dim).astype(k_parts[0].dtype)
        scores = [jnp.einsum("bkqd,bksd->bkqs", q, part, preferred_element_type=jnp.float32)
                  for part in k_parts]
        scores = scores[0] if len(scores) == 1 else jnp.concatenate(scores, axis=-1)
        scores = scores.reshape(b, c.num_kv_heads, groups, t, slots) * (c.head_dim ** -0.5)
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v_parts[0].dtype)
        probs = probs.reshape(b, c.num_kv_heads, groups * t, slots)
        starts = [sum(widths[:i]) for i in range(len(widths))]
        outs = [jnp.einsum("bkqs,bksd->bkqd",
                           jax.lax.slice_in_dim(probs, s0, s0 + w, axis=3)
                           if len(widths) > 1 else probs, part,
                           preferred_element_type=jnp.float32)
                for s0, w, part in zip(starts, widths, v_parts)]
        out = outs[0]
        for part_out in outs[1:]:
            out = out + part_out
        out = out.astype(x.dtype)
        out = out.reshape(b, c.num_kv_heads, groups, t, c.head_dim).transpose(0, 3, 1, 2, 4)
        out = out.reshape(b, t, c.num_heads * c.head_dim)
        return self.o_proj(out, adapter_ids), new_kv


class MLP(nnx.Module):
    """SwiGLU feed-forward block."""

    def __init__(self, config: ModelConfig, lora: LoraConfig | None, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        kw = dict(use_bias=False, dtype=config.jnp_dtype, init_std=config.initializer_range,
                  rngs=rngs)
        self.gate_proj = LoRALinear(d, f, lora=_lora_for("gate_proj", lora), **kw)
        self.up_proj = LoRALinear(d, f, lora=_lora_for("up_proj", lora), **kw)
        self.down_proj = LoRALinear(f, d, lora=_lora_for("down_proj", lora), **kw)

    def __call__(self, x: Array, adapter_ids: Array) -> Array:
        h = jax.nn.silu(self.gate_proj(x, adapter_ids)) * self.up_proj(x, adapter_ids)
        return self.down_proj(h, adapter_ids)


class DecoderLayer(nnx.Module):
    """Pre-norm transformer block: attention then SwiGLU, each with a residual."""

    def __init__(self, config: ModelConfig, lora: LoraConfig | None, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.jnp_dtype)
        self.self_attn = Attention(config, lora, rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps,
                                                config.jnp_dtype)
        self.mlp = MLP(config, lora, rngs)

    def __call__(self, x, positions, adapter_ids, kv_valid, write_index, cache_kv,
                 cache_view=None):
        h, new_kv = self.self_attn(self.input_layernorm(x), positions, adapter_ids, kv_valid,
                                   write_index, cache_kv, cache_view)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x), adapter_ids)
        return x, new_kv


@functools.partial(jax.jit, static_argnums=(0, 8), inline=True)
def _call_layer(graphdef, state, x, positions, adapter_ids, kv_valid, write_index, kv,
                cache_view):
    """One decoder layer, traced once per distinct argument shapes instead of once per
    layer: the layers share one graphdef, so JAX traces a 30-layer forward's layer once and
    differentiates it once (tracing and differentiating every layer was ~8 of the 12 s a
    SmolLM2 update took to trace). `inline=True` puts its equations into the enclosing
    program as if the layer had been called directly: the same compiled program."""
    return nnx.merge(graphdef, state)(x, positions, adapter_ids, kv_valid, write_index, kv,
                                      cache_view)


class Decoder(nnx.Module):
    """Causal LM decoder (Llama / Qwen2 / SmolLM2) with stacked LoRA adapters.

    Call it with token ids, positions and one adapter index per row; it returns the final
    (post-norm) hidden states and the updated cache. `logits(hidden)` applies the LM head.
    """

    def __init__(self, config: ModelConfig, lora: LoraConfig | None = None, *,
                 rngs: nnx.Rngs):
        self.config = config
        self.lora_config = lora
        self.embed_tokens = nnx.Param(nnx.initializers.normal(config.initializer_range)(
            rngs.params(), (config.vocab_size, config.hidden_size), config.jnp_dtype))
        self.layers = nnx.List([DecoderLayer(config, lora, rngs)
                                for _ in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.jnp_dtype)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nnx.Param(nnx.initializers.normal(config.initializer_range)(
                rngs.params(), (config.hidden_size, config.vocab_size), config.jnp_dtype))

    def __call__(self, tokens: Array, positions: Array, adapter_ids: Array, kv_valid: Array,
                 cache: KVCache | None = None, write_index: Array | int = 0,
                 remat: str = "none", cache_view: tuple[int, int] | None = None):
        """Runs the decoder.

        Args:
            tokens: `[batch, tokens]` int32 ids.
            positions: `[batch, tokens]` int32 RoPE positions.
            adapter_ids: `[batch]` int32 adapter per row, or a scalar for all rows; < 0 = none.
                None: no LoRA computation (the base weights, or weights with an adapter
                merged in: `functional.merge_adapter`).
            kv_valid: `[batch, slots]` bool, key slots holding real tokens after this call.
            cache: optional KVCache with `slots` entries per row.
            write_index: slot of `tokens[:, 0]` in the cache (0 without a cache).
            remat: a `models.remat.REMAT_POLICIES` name: the layers run as a
                rematerialised `lax.scan` (`models.remat.scan_layers`; for differentiated
                passes, with an unsegmented cache or none); "none" = the plain layer loop.
            cache_view: static `(write segment, visible segments)` of a segmented cache
                (`Attention.__call__`); None = segment 0, all segments.

        Returns:
            `(hidden [batch, tokens, hidden] post-norm, new cache or None)`.
        """
        b = tokens.shape[0]
        if adapter_ids is not None:
            adapter_ids = jnp.broadcast_to(jnp.asarray(adapter_ids, jnp.int32), (b,))
        write_index = jnp.asarray(write_index, jnp.int32)
        x = self.embed_tokens[...][tokens]  # [batch, tokens, hidden]
        new_keys, new_values = [], []
        scanned = remat != "none"
        if scanned:
            if cache is not None and (cache_view is not None
                                      or isinstance(cache.keys[0], tuple)):
                raise ValueError("Decoder: remat takes an unsegmented cache only")
            kv = None if cache is None else (cache.keys, cache.values)
            x, kv = scan_layers(list(self.layers), x, (positions, adapter_ids, kv_valid,
                                                       write_index), remat, kv)
            if kv is not None:
                new_keys, new_values = list(kv[0]), list(kv[1])
        for i, layer in enumerate(() if scanned else self.layers):
            kv = (cache.keys[i], cache.values[i]) if cache is not None else None
            x, new_kv = _call_layer(*nnx.split(layer), x, positions, adapter_ids, kv_valid,
                                    write_index, kv, cache_view)
            if new_kv is not None:
                new_keys.append(new_kv[0])
                new_values.append(new_kv[1])
        hidden = self.norm(x)
        new_cache = KVCache(tuple(new_keys), tuple(new_values)) if cache is not None else None
        return hidden, new_cache

    def logits(self, hidden: Array) -> Array:
        """LM head: `[..., hidden]` -> float32 logits `[..., vocab]`."""
        if self.lm_head is None:  # tied: contract with the embedding rows, no transpose
            return jnp.einsum("...d,vd->...v", hidden,
                              self.embed_tokens[...].astype(hidden.dtype),
                              preferred_element_type=jnp.float32)
        return jnp.einsum("...d,dv->...v", hidden, self.lm_head[...].astype(hidden.dtype),
                          preferred_element_type=jnp.float32)
