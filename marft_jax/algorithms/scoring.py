"""Scoring sampled actions with one full forward pass over `[observation ; action]` rows.

Observations arrive left-padded (`[..., O]`), actions right-padded (`[..., K]`); their
concatenation has all real tokens contiguous, so RoPE positions follow from the mask and the
logits at position `O - 1 + k` predict action token k. One forward yields the per-token
log-probs, entropies and the hidden states the critic reads (see `critic.value_features`),
which is what lets the "shared" critic trunk cost no extra pass.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import struct

from marft_jax.algorithms import critic as critic_lib
from marft_jax.models import functional as F

Array = jax.Array


@struct.dataclass
class Scores:
    """What one forward pass over `[obs ; action]` rows gives.

    Attributes:
        token_logprobs: `[..., K]` float32 log π(a_k | obs, a_<k) (pads included, unmasked).
        entropy: `[..., K]` float32 entropy of the policy before token k.
        features: `[..., P, H]` stop-gradient trunk features at the value positions
            (P = 1 action level, K token level); None when not asked for.
    """

    token_logprobs: Array
    entropy: Array
    features: Array | None


def concat_rows(obs_tokens: Array, obs_mask: Array, action_tokens: Array,
                action_mask: Array) -> tuple[Array, Array]:
    """`[..., O]` and `[..., K]` -> tokens and mask `[..., O + K]`."""
    chex.assert_equal_shape_prefix([obs_tokens, obs_mask, action_tokens, action_mask],
                                   obs_tokens.ndim - 1)
    tokens = jnp.concatenate([obs_tokens, action_tokens], axis=-1).astype(jnp.int32)
    mask = jnp.concatenate([obs_mask, action_mask], axis=-1).astype(bool)
    return tokens, mask


def _row_adapter_ids(adapter_ids: Array | int, r: int, a: int, e: int) -> Array:
    """`[A]` per-agent (or scalar) adapter ids -> `[R * A * E]` per row."""
    ids = jnp.asarray(adapter_ids, jnp.int32)
    if ids.ndim == 1:
        chex.assert_shape(ids, (a,))
        ids = ids[None, :, None]
    return jnp.broadcast_to(ids, (r, a, e)).reshape(r * a * e)


def _hidden(graphdef, base, lora, tokens: Array, mask: Array, adapter_ids: Array) -> Array:
    """Forward of `[rows, T]` tokens -> post-norm hidden `[rows, T, H]`."""
    hidden, _ = F.forward(graphdef, base, lora, tokens, F.positions_from_mask(mask),
                          adapter_ids, mask)
    return hidden


def score_actions(graphdef, base, lora, obs_tokens: Array, obs_mask: Array,
                  action_tokens: Array, action_mask: Array, adapter_ids: Array, *,
                  num_value_positions: int | None) -> Scores:
    """Log-probs, entropies and critic features of actions, one forward pass.

    Args:
        graphdef, base, lora: the split decoder.
        obs_tokens: `[R, A, E, O]` int32, left-padded.
        obs_mask: `[R, A, E, O]` bool.
        action_tokens: `[R, A, E, K]` int32, right-padded.
        action_mask: `[R, A, E, K]` bool.
        adapter_ids: `[A]` int32 adapter of each agent, or a scalar for every row
            (< 0 = adapters off, the base policy).
        num_value_positions: 1 or K to return critic features, None for none.

    Returns:
        `Scores` with `[R, A, E, ...]` leading axes.
    """
    chex.assert_rank([obs_tokens, action_tokens], 4)
    r, a, e, o = obs_tokens.shape
    k = action_tokens.shape[-1]
    tokens, mask = concat_rows(obs_tokens, obs_mask, action_tokens, action_mask)
    rows = r * a * e
    ids = _row_adapter_ids(adapter_ids, r, a, e)
    hidden = _hidden(graphdef, base, lora, tokens.reshape(rows, o + k),
                     mask.reshape(rows, o + k), ids)  # [rows, O + K, H]
    before_action = jax.lax.slice_in_dim(hidden, o - 1, o - 1 + k, axis=1)  # [rows, K, H]
    logits = F.lm_logits(graphdef, base, lora, before_action)  # [rows, K, V] float32
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    chosen = action_tokens.reshape(rows, k, 1)
    token_logprobs = jnp.take_along_axis(logp_all, chosen, axis=-1)[..., 0]  # [rows, K]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)  # [rows, K]
    features = None
    if num_value_positions is not None:
        features = critic_lib.value_features(hidden, o, num_value_positions)
        features = features.reshape(r, a, e, num_value_positions, -1)
    return Scores(token_logprobs=token_logprobs.reshape(r, a, e, k),
                  entropy=entropy.reshape(r, a, e, k), features=features)


def trunk_features(graphdef, base, lora, obs_tokens: Array, obs_mask: Array,
                   action_tokens: Array, action_mask: Array, adapter_ids: Array,
                   num_value_positions: int) -> Array:
    """Critic features only (no LM head): `[R, A, E, P, H]`, stop-gradient.

    Arguments as in `score_actions`; `num_value_positions` is 1 or K.
    """
    r, a, e, o = obs_tokens.shape
    k = action_tokens.shape[-1]
    tokens, mask = concat_rows(obs_tokens, obs_mask, action_tokens, action_mask)
    rows = r * a * e
    ids = _row_adapter_ids(adapter_ids, r, a, e)
    hidden = _hidden(graphdef, base, lora, tokens.reshape(rows, o + k),
                     mask.reshape(rows, o + k), ids)
    feats = critic_lib.value_features(hidden, o, num_value_positions)
    return feats.reshape(r, a, e, num_value_positions, -1)


def observation_features(graphdef, base, lora, obs_tokens: Array, obs_mask: Array,
                         adapter_id: Array | int) -> Array:
    """Features at the last token of left-padded observations `[E, O]` -> `[E, H]`.

    This is the bootstrap value's input: the value of a decision before any of its action
    tokens, the same position as `value_features` gives for token 0.
    """
    chex.assert_rank(obs_tokens, 2)
    e = obs_tokens.shape[0]
    ids = jnp.broadcast_to(jnp.asarray(adapter_id, jnp.int32), (e,))
    hidden = _hidden(graphdef, base, lora, obs_tokens.astype(jnp.int32),
                     obs_mask.astype(bool), ids)
    return jax.lax.stop_gradient(hidden[:, -1])
