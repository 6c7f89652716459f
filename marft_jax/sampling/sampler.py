"""Host-side sampler: shape buckets, one jitted generation per bucket, a donated cache.

Prompts and batches are padded up to a few bucket sizes, so varying prompts, adapters,
temperatures, limits and adapter weights (same shapes) reuse one compilation per bucket.
Padding rows generate nothing and are dropped on return.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from marft_jax.models.decoder import KVCache
from marft_jax.models.layers import BASE_ADAPTER
from marft_jax.sampling.generate import (cast_params, generate_with_cache, init_cache,
                                         model_config, row_keys)
from marft_jax.sampling.types import Generation, SamplerConfig

DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)


def bucket(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= size (multiples of the largest bucket beyond it)."""
    i = bisect.bisect_left(buckets, size)
    if i < len(buckets):
        return buckets[i]
    top = buckets[-1]
    return -(-size // top) * top


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int):
    """Left-pads token lists to `[len(prompts), length]` int32 ids and a bool mask."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for row, ids in enumerate(prompts):
        if len(ids) > length:
            raise ValueError(f"prompt {row} has {len(ids)} tokens, more than {length}")
        if len(ids):
            tokens[row, length - len(ids):] = ids
            mask[row, length - len(ids):] = True
    return tokens, mask


class Sampler:
    """Batched generation with bucketed shapes and a compile counter.

    Example:
        sampler = Sampler(graphdef, SamplerConfig(max_new_tokens=64, stop_token_ids=(2,)))
        gen = sampler(base, lora, [[1, 5, 7], [1, 9]], adapter_ids=[0, 1], key=key)

    Attributes:
        compile_count: how many times the generation function was traced (one per bucket
            shape; a new bucket or a new config compiles, nothing else does).
    """

    def __init__(self, graphdef, config: SamplerConfig, *,
                 batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
                 prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
                 default_temperature: float = 0.5, keep_cache: bool = True,
                 keep_prefill_weights: bool = True):
        """
        Args:
            graphdef: the decoder graphdef (static).
            config: static sampling settings.
            batch_buckets, prompt_buckets: increasing sizes that shapes are rounded up to.
            default_temperature: per-row temperature when a call gives none (the reference
                samples at 0.5).
            keep_cache: keep one KV cache per bucket and donate it to each call (no new
                allocation per call); off, each call allocates its cache.
            keep_prefill_weights: with `config.prefill_dtype` set, keep the base weights
                cast to it while the same `base` object is passed (the frozen base of
                LoRA training), instead of casting them on every call.
        """
        self.graphdef = graphdef
        self.config = config
        self.batch_buckets = tuple(sorted(batch_buckets))
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        self.default_temperature = float(default_temperature)
        self.keep_cache = keep_cache
        self.keep_prefill_weights = keep_prefill_weights
        self.compile_count = 0
        self._caches: dict[tuple[int, int], KVCache] = {}
        self._prefill: tuple[nnx.State, nnx.State] | None = None  # (base, cast base)
        self._fn = jax.jit(self._generate, donate_argnums=(8,))
        self._cast = jax.jit(cast_params, static_argnums=1)

    def _generate(self, base, lora, tokens, mask, adapter_ids, keys, temperatures, max_new,
                  cache, prefill_base):
        self.compile_count += 1  # runs at trace time only: counts compilations
        gen, cache = generate_with_cache(self.graphdef, base, lora, tokens, mask, adapter_ids,
                                         keys, temperatures, max_new, cache,
                                         config=self.config, prefill_base=prefill_base)
        return gen, cache

    def _prefill_base(self, base):
        if not (self.keep_prefill_weights and self.config.prefill_dtype):
            return None
        if self._prefill is None or self._prefill[0] is not base:
            self._prefill = (base, self._cast(base, self.config.prefill_dtype))
        return self._prefill[1]

    def _prompt_arrays(self, prompts) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded `(tokens, mask)` with the prompt length rounded up to its bucket."""
        pad_id = self.config.pad_token_id
        if isinstance(prompts, tuple):
            tokens, mask = (np.asarray(x) for x in prompts)
            extra = bucket(tokens.shape[1], self.prompt_buckets) - tokens.shape[1]
            return (np.pad(tokens.astype(np.int32), ((0, 0), (extra, 0)),
                           constant_values=pad_id),
                    np.pad(mask.astype(bool), ((0, 0), (extra, 0))))
        length = bucket(max([len(x) for x in prompts] + [1]), self.prompt_buckets)
        return left_pad(prompts, length, pad_id)

    def _cache_for(self, base, lora, batch: int, prompt_len: int) -> KVCache:
        cache = self._caches.pop((batch, prompt_len), None)
        if cache is None:
            cfg = model_config(self.graphdef, base, lora)
            cache = init_cache(cfg, batch, prompt_len, self.config)
        return cache

    def __call__(self, base: nnx.State, lora: nnx.State,
                 prompts: Sequence[Sequence[int]] | tuple[np.ndarray, np.ndarray],
                 adapter_ids: Sequence[int] | np.ndarray | int, key: jax.Array,
                 temperatures: Sequence[float] | np.ndarray | float | None = None,
                 max_new_tokens: Sequence[int] | np.ndarray | int | None = None
                 ) -> Generation:
        """Generates for a batch of prompts.

        Args:
            base, lora: model states (new adapter weights of the same shapes never
                recompile).
            prompts: token-id lists, or a `(tokens [b, p], mask [b, p])` pair (any padding).
            adapter_ids: adapter per row (< 0: base model) or one for all rows.
            key: one PRNG key (row r uses `fold_in(key, r)`, independent of bucket padding)
                or per-row keys `[b]`.
            temperatures: per-row or one temperature (<= 0: greedy); default
                `default_temperature`.
            max_new_tokens: per-row or one limit (<= config.max_new_tokens); default the
                config's.

        Returns:
            A `Generation` with `b` rows and `config.max_new_tokens` columns.
        """
        tokens, mask = self._prompt_arrays(prompts)
        b, pb = tokens.shape
        bb = bucket(b, self.batch_buckets)
        rows = lambda x, fill, dtype: np.concatenate(
            [np.broadcast_to(np.asarray(x, dtype), (b,)), np.full((bb - b,), fill, dtype)])
        temps = self.default_temperature if temperatures is None else temperatures
        limit = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        pad_rows = ((0, bb - b), (0, 0))
        keys = row_keys(key if isinstance(key, jax.Array) else jnp.asarray(key), b)
        if bb > b:  # padding rows: any keys, they generate nothing
            keys = jnp.concatenate([keys, jax.random.split(jax.random.key(0), bb - b)])
        cache = self._cache_for(base, lora, bb, pb)
        gen, cache = self._fn(
            base, lora, np.pad(tokens, pad_rows, constant_values=self.config.pad_token_id),
            np.pad(mask, pad_rows), rows(adapter_ids, BASE_ADAPTER, np.int32), keys,
            rows(temps, 0.0, np.float32), rows(limit, 0, np.int32), cache,
            self._prefill_base(base))
        if self.keep_cache:
            self._caches[(bb, pb)] = cache
        return jax.tree.map(lambda x: x[:b], gen)
