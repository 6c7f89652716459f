"""The per-step token distribution: temperature, top-k, top-p, draws and log-probs.

Everything here works on one decode step's float32 logits `[batch, vocab]` and is pure, so
it runs inside the jitted decode loop and in tests against a full-forward recomputation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from marft_jax.sampling.types import SamplerConfig

Array = jax.Array
NEG_INF = -jnp.inf


def argmax(logits: Array) -> Array:
    """First index of the maximum over the last axis, as int32 (= `jnp.argmax`).

    A max-reduce then a min-reduce over matching indices: on XLA's CPU backend this is
    about 3x faster than `jnp.argmax`'s variadic (value, index) reduction. A row of NaNs
    gives the last index rather than an out-of-range one.
    """
    vocab = logits.shape[-1]
    best = jnp.max(logits, axis=-1, keepdims=True)
    index = jnp.arange(vocab, dtype=jnp.int32)
    return jnp.minimum(jnp.min(jnp.where(logits == best, index, vocab), axis=-1), vocab - 1)


def _safe_temperature(temperatures: Array) -> Array:
    """`[batch]` temperatures with the greedy rows (<= 0) replaced by 1 (never divided by 0)."""
    return jnp.where(temperatures > 0, temperatures, 1.0).astype(jnp.float32)


def _nucleus(sorted_logits: Array, top_p: float) -> Array:
    """Masks `sorted_logits` `[batch, k]` (descending) to the top-p nucleus with -inf.

    A token is kept when the mass of the tokens ranked before it is below `top_p`, so the
    most likely token is always kept (transformers' TopPLogitsWarper, min_tokens_to_keep=1).
    """
    if top_p >= 1.0:
        return sorted_logits
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # [batch, k] exclusive cumulative mass
    keep = before < top_p
    keep = keep.at[:, 0].set(True)
    return jnp.where(keep, sorted_logits, NEG_INF)


def candidates(logits: Array, temperatures: Array, config: SamplerConfig):
    """The sampled distribution in compact form.

    Args:
        logits: `[batch, vocab]` float32 raw logits.
        temperatures: `[batch]` float32 (<= 0: that row is greedy).
        config: static top-k / top-p settings.

    Returns:
        `(ids, logp)`: `ids` `[batch, k]` int32 candidate token ids (None when the whole
        vocabulary is the candidate set, in vocabulary order) and `logp` `[batch, k]`
        float32 normalised log-probs of the sampled distribution (-inf for removed tokens).
    """
    scaled = logits / _safe_temperature(temperatures)[:, None]  # [batch, vocab]
    vocab = logits.shape[-1]
    if 0 < config.top_k < vocab:
        vals, ids = jax.lax.top_k(scaled, config.top_k)  # [batch, k], descending
        vals = _nucleus(vals, config.top_p)
        return ids.astype(jnp.int32), jax.nn.log_softmax(vals, axis=-1)
    if config.top_p < 1.0:
        vals, ids = jax.lax.top_k(scaled, vocab)  # full descending sort
        vals = _nucleus(vals, config.top_p)
        return ids.astype(jnp.int32), jax.nn.log_softmax(vals, axis=-1)
    return None, jax.nn.log_softmax(scaled, axis=-1)


def sample_logprobs(logits: Array, temperatures: Array, tokens: Array,
                    config: SamplerConfig) -> Array:
    """Log-prob `[batch]` of `tokens` under the sampled distribution (0 for greedy rows).

    Tokens outside the top-k / top-p set get -inf.
    """
    ids, logp = candidates(logits, temperatures, config)
    if ids is None:
        lp = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
    else:
        hit = ids == tokens[:, None]  # [batch, k]
        lp = jnp.where(hit.any(-1), jnp.sum(jnp.where(hit, logp, 0.0), -1), NEG_INF)
    greedy = config.greedy | (temperatures <= 0)
    return jnp.where(greedy, 0.0, lp)


def policy_logprobs(logits: Array, tokens: Array) -> Array:
    """Log-prob `[batch]` of `tokens` under the raw-logit policy `log_softmax(logits)`."""
    picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def draw(logits: Array, keys: Array, temperatures: Array, config: SamplerConfig):
    """Draws one token per row.

    Args:
        logits: `[batch, vocab]` float32 raw logits.
        keys: `[batch]` typed PRNG keys, one per row (this step's).
        temperatures: `[batch]` float32 (<= 0: greedy row).
        config: static sampling settings.

    Returns:
        `(tokens [batch] int32, logprobs [batch] float32)`: log-probs of the sampled
        distribution (0 for greedy rows).
    """
    greedy_tokens = argmax(logits)
    if config.greedy:
        return greedy_tokens, jnp.zeros(logits.shape[:1], jnp.float32)
    ids, logp = candidates(logits, temperatures, config)
    choice = jax.vmap(jax.random.categorical)(keys, logp)  # [batch]
    lp = jnp.take_along_axis(logp, choice[:, None], axis=-1)[:, 0]
    tokens = choice if ids is None else jnp.take_along_axis(ids, choice[:, None], -1)[:, 0]
    greedy = temperatures <= 0
    return (jnp.where(greedy, greedy_tokens, tokens.astype(jnp.int32)),
            jnp.where(greedy, 0.0, lp))
