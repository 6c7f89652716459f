"""PPO losses of MARFT as per-agent weighted sums with counts.

Every function reduces over all axes but the agent axis (axis 1 of `[R, A, E, ...]`) and
returns sums together with the number of terms summed, so a mean over a minibatch is exact
whatever the micro-batching (sum the sums and counts, divide once), and across devices.

Masks are applied with `jnp.where` *before* any non-linearity, so garbage in padded slots
(NaN or ±inf log-probs) can neither reach a sum nor its gradient. A non-finite value in a
*real* slot of the rollout-side inputs (old or reference log-probs, advantages) turns its
agent's sums into NaN, which the update's guard reads as "skip this agent's step", while its
gradient is exactly zero: it cannot leak into other agents' gradients through computations
they share (a dense multi-adapter LoRA contraction, for one, would spread 0 · NaN).

Registry: `POLICY_LOSSES` (name -> function) with the names "action" (MARFT-A, GRPO,
IPPO: one ratio per decision) and "token" (MARFT-T: one ratio per token).
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


@struct.dataclass
class PolicyTerms:
    """Per-agent sums `[A]` over one batch of decisions (or tokens).

    Attributes:
        loss: Σ −min(ρ·Â, clip(ρ, 1 ± ε)·Â).
        entropy: Σ entropy (per decision: its mean over tokens, action level).
        approx_kl: Σ (ρ − 1) − log ρ.
        clip_frac: Σ 1{|ρ − 1| > ε}.
        kl_ref: Σ KL estimate to the base policy (k3, on the sampled tokens; 0 without it).
        count: the number of decisions (action level) or tokens (token level) summed.
    """

    loss: Array
    entropy: Array
    approx_kl: Array
    clip_frac: Array
    kl_ref: Array
    count: Array


@struct.dataclass
class ValueTerms:
    """Per-agent sums `[A]` of the value loss and their count."""

    loss: Array
    count: Array


def per_agent_sum(x: Array) -> Array:
    """Sums `[R, A, ...]` over every axis but the agent axis -> `[A]`."""
    axes = tuple(i for i in range(x.ndim) if i != 1)
    return jnp.sum(x.astype(jnp.float32), axis=axes)


def huber(error: Array, delta: float | None) -> Array:
    """Symmetric Huber loss: e²/2 for |e| ≤ δ, δ·(|e| − δ/2) beyond; e²/2 if δ is None.

    (The reference's copy gives 0 for e < −δ, REFERENCE §9.7.)
    """
    if delta is None:
        return 0.5 * jnp.square(error)
    size = jnp.abs(error)
    return jnp.where(size <= delta, 0.5 * jnp.square(error), delta * (size - 0.5 * delta))


def sequence_logprobs(token_logprobs: Array, mask: Array, norm: str,
                      word_counts: Array | None = None) -> Array:
    """Normalised action log-prob `[...]` from per-token log-probs `[..., K]`.

    Args:
        token_logprobs: `[..., K]`.
        mask: `[..., K]` real tokens.
        norm: "sum" (unchanged), "token" (÷ number of tokens) or "word" (÷ `word_counts`).
        word_counts: `[...]` words of each decoded action (needs the tokenizer, so it is
            precomputed); counts below 1 are taken as 1.
    """
    chex.assert_equal_shape([token_logprobs, mask])
    total = jnp.sum(jnp.where(mask, token_logprobs, 0.0), axis=-1)
    if norm == "sum":
        return total
    if norm == "token":
        return total / jnp.maximum(jnp.sum(mask, axis=-1), 1)
    if norm == "word":
        if word_counts is None:
            raise ValueError("logprob_norm 'word' needs word_counts")
        chex.assert_equal_shape([total, word_counts])
        return total / jnp.maximum(word_counts.astype(jnp.float32), 1.0)
    raise ValueError(f"unknown logprob_norm {norm!r}")


def _clipped_objective(log_ratio: Array, advantages: Array, clip_eps: float):
    """`(−surrogate, approx-KL, clipped indicator)` elementwise from log ρ."""
    ratio = jnp.exp(log_ratio)
    surrogate = jnp.minimum(ratio * advantages,
                            jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    approx_kl = (ratio - 1.0) - log_ratio
    clipped = (jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32)
    return -surrogate, approx_kl, clipped


def _k3(new_logprobs: Array, ref_logprobs: Array, mask: Array) -> Array:
    """Per-token k3 estimate of KL(π ‖ π_ref) on sampled tokens: e^d − d − 1, d = ref − new."""
    d = jnp.where(mask, ref_logprobs - new_logprobs, 0.0)
    return jnp.expm1(d) - d


def _finite_inputs(mask: Array, old_logprobs: Array, ref_logprobs: Array | None) -> Array:
    """`[..., K]` bool: tokens whose rollout-side inputs are finite (True on padding)."""
    ok = jnp.isfinite(old_logprobs)
    if ref_logprobs is not None:
        ok = ok & jnp.isfinite(ref_logprobs)
    return ok | ~mask


def _poison(x: Array, bad: Array) -> Array:
    """NaN where `bad`: the sum reports the problem, the gradient through `x` stays 0 there."""
    return jnp.where(bad, jnp.nan, x)


def ppo_action_terms(new_logprobs: Array, old_logprobs: Array, mask: Array,
                     advantages: Array, entropy: Array, clip_eps: float, norm: str = "sum",
                     word_counts: Array | None = None,
                     ref_logprobs: Array | None = None) -> PolicyTerms:
    """MARFT-A: one clipped ratio per decision over its normalised sequence log-prob.

    A decision whose old or reference log-probs or advantage are not finite contributes
    NaN to its agent's loss, approx-KL, clip and KL sums (so the update's guard skips that
    agent's step and counts it) but exactly zero gradient, so the bad value cannot reach
    other agents' gradients through computations the agents share.

    Args:
        new_logprobs, old_logprobs: `[R, A, E, K]` per-token log-probs (current / rollout).
        mask: `[R, A, E, K]` real action tokens; decisions without one are not counted.
        advantages: `[R, A, E]`.
        entropy: `[R, A, E, K]` per-token entropy of the current policy.
        clip_eps: PPO ε.
        norm, word_counts: see `sequence_logprobs`.
        ref_logprobs: `[R, A, E, K]` base-policy log-probs for the KL term, or None.

    Returns:
        `PolicyTerms` summed over decisions, `[A]` each.
    """
    chex.assert_rank([new_logprobs, advantages], [4, 3])
    chex.assert_equal_shape([new_logprobs, old_logprobs, mask, entropy])
    chex.assert_equal_shape_prefix([new_logprobs, advantages], 3)
    mask = mask.astype(bool)
    valid = jnp.any(mask, axis=-1)  # [R, A, E]
    finite = _finite_inputs(mask, old_logprobs, ref_logprobs)  # [R, A, E, K]
    bad = valid & ~(jnp.all(finite, axis=-1) & jnp.isfinite(advantages))
    ok = valid & ~bad
    new_seq = sequence_logprobs(new_logprobs, mask, norm, word_counts)
    old_seq = sequence_logprobs(jnp.where(finite, old_logprobs, 0.0), mask, norm, word_counts)
    log_ratio = jnp.where(ok, new_seq - old_seq, 0.0)
    loss, approx_kl, clipped = _clipped_objective(log_ratio, jnp.where(ok, advantages, 0.0),
                                                  clip_eps)
    lengths = jnp.maximum(jnp.sum(mask, axis=-1), 1)
    ent = jnp.sum(jnp.where(mask, entropy, 0.0), axis=-1) / lengths
    if ref_logprobs is None:
        kl_ref = jnp.zeros_like(ent)
    else:
        ref = jnp.where(finite & mask, ref_logprobs, new_logprobs)
        kl_ref = jnp.sum(jnp.where(mask, _k3(new_logprobs, ref, mask), 0.0), axis=-1) / lengths
    keep = lambda x: per_agent_sum(jnp.where(valid, x, 0.0))
    spoil = lambda x: keep(_poison(x, bad))
    return PolicyTerms(loss=spoil(loss), entropy=keep(ent), approx_kl=spoil(approx_kl),
                       clip_frac=spoil(clipped), kl_ref=spoil(kl_ref),
                       count=per_agent_sum(valid))


def ppo_token_terms(new_logprobs: Array, old_logprobs: Array, mask: Array,
                    advantages: Array, entropy: Array, clip_eps: float, norm: str = "sum",
                    word_counts: Array | None = None,
                    ref_logprobs: Array | None = None) -> PolicyTerms:
    """MARFT-T: one clipped ratio per token, masked sums over real tokens.

    Non-finite old / reference log-probs or advantages are handled per token as in
    `ppo_action_terms` (NaN sums, zero gradient).

    Args:
        new_logprobs, old_logprobs, mask, entropy, ref_logprobs: `[R, A, E, K]`.
        advantages: `[R, A, E, K]`.
        clip_eps: PPO ε.
        norm, word_counts: accepted for a common signature with `ppo_action_terms`; a
            per-token ratio needs no sequence normalisation, so they are not used.

    Returns:
        `PolicyTerms` summed over real tokens, `[A]` each.
    """
    chex.assert_rank(new_logprobs, 4)
    chex.assert_equal_shape([new_logprobs, old_logprobs, mask, advantages, entropy])
    mask = mask.astype(bool)
    finite = _finite_inputs(mask, old_logprobs, ref_logprobs) & jnp.isfinite(advantages)
    bad = mask & ~finite
    ok = mask & finite
    log_ratio = jnp.where(ok, new_logprobs - jnp.where(ok, old_logprobs, 0.0), 0.0)
    loss, approx_kl, clipped = _clipped_objective(log_ratio, jnp.where(ok, advantages, 0.0),
                                                  clip_eps)
    if ref_logprobs is None:
        kl_ref = jnp.zeros_like(loss)
    else:
        kl_ref = _k3(new_logprobs, jnp.where(ok, ref_logprobs, new_logprobs), ok)
    keep = lambda x: per_agent_sum(jnp.where(mask, x, 0.0))
    spoil = lambda x: keep(_poison(x, bad))
    return PolicyTerms(loss=spoil(loss), entropy=keep(entropy), approx_kl=spoil(approx_kl),
                       clip_frac=spoil(clipped), kl_ref=spoil(kl_ref), count=per_agent_sum(mask))


def value_terms(new_values: Array, old_values: Array, returns: Array, valid: Array,
                clip_eps: float | None, huber_delta: float | None) -> ValueTerms:
    """Clipped value loss: max(huber(G − V_clip), huber(G − V)) with V_clip = V_old ± ε.

    Args:
        new_values, old_values, returns, valid: `[R, A, E]` or `[R, A, E, K]`.
        clip_eps: value clip around the old value; None = unclipped.
        huber_delta: symmetric Huber δ; None = e²/2.

    Returns:
        `ValueTerms` (sums and counts per agent, without the loss coefficient).
    """
    chex.assert_equal_shape([new_values, old_values, returns, valid])
    valid = valid.astype(bool)
    returns = jnp.where(valid, returns, 0.0)
    old_values = jnp.where(valid, old_values, 0.0)
    new_values = jnp.where(valid, new_values, 0.0)
    loss = huber(returns - new_values, huber_delta)
    if clip_eps is not None:
        clipped = old_values + jnp.clip(new_values - old_values, -clip_eps, clip_eps)
        loss = jnp.maximum(loss, huber(returns - clipped, huber_delta))
    return ValueTerms(loss=per_agent_sum(jnp.where(valid, loss, 0.0)),
                      count=per_agent_sum(valid))


POLICY_LOSSES: dict[str, Callable[..., PolicyTerms]] = {
    "action": ppo_action_terms,
    "token": ppo_token_terms,
}
