"""Building blocks of the decoder: RMSNorm, rotary embeddings, and linear layers with
stacked per-agent LoRA adapters."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from marft_jax.models.config import LoraConfig, RopeConfig

Array = jax.Array

# The adapter index of the base policy: a row with a negative index runs without LoRA (how
# the KL reference and the critic's base trunk run without a second parameter set).
BASE_ADAPTER = -1


class RMSNorm(nnx.Module):
    """Root-mean-square layer norm; statistics in float32."""

    def __init__(self, dim: int, eps: float, dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), dtype))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def rope_inverse_frequencies(head_dim: int, rope: RopeConfig) -> Array:
    """Inverse frequencies `[head_dim // 2]` for the configured RoPE variant."""
    inv = 1.0 / (rope.theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if rope.rope_type == "linear":
        inv = inv / rope.factor
    elif rope.rope_type == "llama3":
        old = rope.original_max_position_embeddings
        low_wavelen = old / rope.low_freq_factor
        high_wavelen = old / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * inv / rope.factor + smooth * inv
        inv = jnp.where(wavelen > low_wavelen, inv / rope.factor,
                        jnp.where(wavelen < high_wavelen, inv, smoothed))
    return inv


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotates `x` `[batch, tokens, heads, head_dim]` by `positions` `[batch, tokens]`.

    Uses the "rotate half" layout of Hugging Face Llama / Qwen2 checkpoints.
    """
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, tokens, head_dim/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    x1, x2 = x32[..., :half], x32[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class LoRALinear(nnx.Module):
    """A linear layer `y = x W (+ b)` with optional stacked LoRA adapters.

    The base kernel is `[in, out]`. When LoRA is enabled, `lora_a` is
    `[num_adapters, in, rank]` and `lora_b` is `[num_adapters, rank, out]` (zero-initialised,
    so a fresh adapter equals the base exactly). Each batch row selects its adapter with an
    index; a negative index switches LoRA off for that row (the base policy). Without
    indices (`adapter_ids=None`) no adapter runs: the kernel alone, e.g. one that already
    holds an adapter (`merged_kernel`).
    """

    def __init__(self, in_dim: int, out_dim: int, *, use_bias: bool, dtype,
                 lora: LoraConfig | None, rngs: nnx.Rngs, init_std: float = 0.02):
        init = nnx.initializers.normal(init_std)
        self.kernel = nnx.Param(init(rngs.params(), (in_dim, out_dim), dtype))
        self.bias = nnx.Param(jnp.zeros((out_dim,), dtype)) if use_bias else None
        self.lora_scale = lora.scale if lora is not None else 0.0
        if lora is not None:
            # PEFT's default init of A: kaiming-uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)).
            bound = 1.0 / math.sqrt(in_dim)
            self.lora_a = nnx.LoRAParam(jax.random.uniform(
                rngs.params(), (lora.num_adapters, in_dim, lora.rank), jnp.float32,
                -bound, bound))
            self.lora_b = nnx.LoRAParam(jnp.zeros((lora.num_adapters, lora.rank, out_dim),
                                                  jnp.float32))
        else:
            self.lora_a = None
            self.lora_b = None

    def merged_kernel(self, adapter: int) -> Array:
        """The kernel with adapter `adapter` folded in: `W + scale · A[adapter] B[adapter]`,
        summed in float32 and stored in the kernel's dtype (`W` itself without LoRA)."""
        w = self.kernel[...]
        if self.lora_a is None:
            return w
        delta = self.lora_a[...][adapter] @ self.lora_b[...][adapter]  # [in, out]
        return (w.astype(jnp.float32) + self.lora_scale * delta).astype(w.dtype)

    def __call__(self, x: Array, adapter_ids: Array | None) -> Array:
        """Applies the layer.

        Args:
            x: `[batch, tokens, in]`.
            adapter_ids: `[batch]` int32 adapter index per row; < 0 means no adapter; None:
                no adapter in any row (no LoRA computation at all).

        Returns:
            `[batch, tokens, out]` in x's dtype.
        """
        # Accumulate in float32 whatever the storage dtype: XLA's CPU backend then runs bf16
        # weights through its native bf16 x bf16 -> f32 kernels instead of converting the
        # whole weight matrix to f32 on every call.
        y = jnp.einsum("btd,de->bte", x, self.kernel[...].astype(x.dtype),
                       preferred_element_type=jnp.float32)  # [batch, tokens, out]
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        if self.lora_a is not None and adapter_ids is not None:
            # A for all adapters in one dense matmul, then each row keeps its own adapter's
            # columns (`where`, not a multiply, so a non-finite adapter cannot leak into other
            # rows through 0 * NaN); B is gathered per row ([batch, rank, out], small).
            n, d, r = self.lora_a.shape
            a = self.lora_a[...].transpose(1, 0, 2).reshape(d, n * r)  # [in, adapters*rank]
            h = jnp.einsum("btd,dk->btk", x.astype(jnp.float32), a)  # [batch, tokens, n*r]
            own = adapter_ids[:, None] == jnp.arange(n)  # [batch, adapters]
            h = jnp.where(own[:, None, :, None], h.reshape(*h.shape[:2], n, r), 0.0)
            h = h.sum(axis=2)  # [batch, tokens, rank]
            b = self.lora_b[...][jnp.clip(adapter_ids, 0, n - 1)]  # [batch, rank, out]
            delta = jnp.einsum("btr,bre->bte", h, b) * self.lora_scale
            y = y + jnp.where((adapter_ids >= 0)[:, None, None], delta, 0.0)
        return y.astype(x.dtype)
