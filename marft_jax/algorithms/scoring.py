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


def to_rows(x: Array) -> Array:
    """`[R, A, E, ...]` -> `[E * R * A, ...]`, env-major.

    Rows are independent, so their order is free; env-major keeps an env axis split over
    devices (data parallelism) a split row axis, where an env-minor flattening would make
    the compiler gather every row onto every device.
    """
    return jnp.moveaxis(x, 2, 0).reshape((-1,) + x.shape[3:])


def from_rows(x: Array, r: int, a: int, e: int) -> Array:
    """Inverse of `to_rows`: `[E * R * A, ...]` -> `[R, A, E, ...]`."""
    return jnp.moveaxis(x.reshape((e, r, a) + x.shape[1:]), 0, 2)


def _row_adapter_ids(adapter_ids: Array | int, r: int, a: int, e: int) -> Array:
    """`[A]` per-agent (or scalar) adapter ids -> `[E * R * A]` per row (`to_rows` order)."""
    ids = jnp.asarray(adapter_ids, jnp.int32)
    if ids.ndim == 1:
        chex.assert_shape(ids, (a,))
        ids = ids[None, :, None]
    return to_rows(jnp.broadcast_to(ids, (r, a, e)))


def _hidden(graphdef, base, lora, tokens: Array, mask: Array, adapter_ids: Array,
            remat: str = "none") -> Array:
    """Forward of `[rows, T]` tokens -> post-norm hidden `[rows, T, H]`."""
    hidden, _ = F.forward(graphdef, base, lora, tokens, F.positions_from_mask(mask),
                          adapter_ids, mask, remat=remat)
    return hidden


def score_actions(graphdef, base, lora, obs_tokens: Array, obs_mask: Array,
                  action_tokens: Array, action_mask: Array, adapter_ids: Array, *,
                  num_value_positions: int | None, remat: str = "none") -> Scores:
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
        remat: rematerialisation of the decoder layers when differentiated
            (`models.remat.REMAT_POLICIES`; the update's `ppo.remat`).

    Returns:
        `Scores` with `[R, A, E, ...]` leading axes.
    """
    chex.assert_rank([obs_tokens, action_tokens], 4)
    r, a, e, o = obs_tokens.shape
    k = action_tokens.shape[-1]
    tokens, mask = concat_rows(obs_tokens, obs_mask, action_tokens, action_mask)
    ids = _row_adapter_ids(adapter_ids, r, a, e)
    hidden = _hidden(graphdef, base, lora, to_rows(tokens), to_rows(mask), ids,
                     remat)  # [rows, O + K, H]
    before_action = jax.lax.slice_in_dim(hidden, o - 1, o - 1 + k, axis=1)  # [rows, K, H]
    logits = F.lm_logits(graphdef, base, lora, before_action)  # [rows, K, V] float32
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    chosen = to_rows(action_tokens)[..., None]  # [rows, K, 1]
    token_logprobs = jnp.take_along_axis(logp_all, chosen, axis=-1)[..., 0]  # [rows, K]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)  # [rows, K]
    features = None
    if num_value_positions is not None:
        features = critic_lib.value_features(hidden, o, num_value_positions)
        features = from_rows(features, r, a, e)
    return Scores(token_logprobs=from_rows(token_logprobs, r, a, e),
                  entropy=from_rows(entropy, r, a, e), features=features)


def trunk_features(graphdef, base, lora, obs_tokens: Array, obs_mask: Array,
                   action_tokens: Array, action_mask: Array, adapter_ids: Array,
                   num_value_positions: int) -> Array:
    """Critic features only (no LM head): `[R, A, E, P, H]`, stop-gradient.

    Arguments as in `score_actions`; `num_value_positions` is 1 or K.
    """
    r, a, e, o = obs_tokens.shape
    tokens, mask = concat_rows(obs_tokens, obs_mask, action_tokens, action_mask)
    ids = _row_adapter_ids(adapter_ids, r, a, e)
    hidden = _hidden(graphdef, base, lora, to_rows(tokens), to_rows(mask), ids)
    feats = critic_lib.value_features(hidden, o, num_value_positions)
    return from_rows(feats, r, a, e)


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
