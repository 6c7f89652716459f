"""Scoring sampled actions with one full forward pass over `[observation ; action]` rows.

Observations arrive left-padded (`[..., O]`), actions right-padded (`[..., K]`); their
concatenation has all real tokens contiguous, so RoPE positions follow from the mask and the
logits at position `O - 1 + k` predict action token k. One forward yields the per-token
log-probs, entropies and the hidden states the critic reads (at `critic.value_columns`),
which is what lets the "shared" critic trunk cost no extra pass.

With a `prefix` (`ppo.shared_prefix`) every agent's observations start with its prefix
(its system prompt, `ObservationLayout.prefix`): the prefixes run once per call and the
rows' remainders attend to their keys and values (`functional.prefix_forward`, the
sampler's mechanism; the columns split as the rollout splits them,
`flexmg.rollout.split_prefix`).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from marft_jax.algorithms import critic as critic_lib
from marft_jax.flexmg.layout import Segments, remainder_columns
from marft_jax.flexmg.rollout import split_prefix
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


def row_width(obs_mask: Array, action_mask: Array, multiple: int = 32) -> int | None:
    """Host-side: the compacted row width for `score_actions(row_width=...)`, or None.

    The longest span of real tokens of any `[obs ; action]` row, rounded up to `multiple`;
    None when that is not narrower than `O + K` (nothing to gain).
    """
    _, mask = concat_rows(jnp.zeros(obs_mask.shape, jnp.int32), obs_mask,
                          jnp.zeros(action_mask.shape, jnp.int32), action_mask)
    width = mask.shape[-1]
    first, last = _real_span(mask.reshape(-1, width))
    need = int(jnp.max(jnp.where(last >= first, last - first + 1, 0)))
    keep = -(-max(1, need) // multiple) * multiple
    return keep if keep < width else None


def _real_span(mask: Array) -> tuple[Array, Array]:
    """First and last real column of `[rows, T]` rows (`(T, -1)` for an empty row)."""
    t = mask.shape[-1]
    cols = jnp.arange(t)
    first = jnp.min(jnp.where(mask, cols, t), axis=-1)
    last = jnp.max(jnp.where(mask, cols, -1), axis=-1)
    return first, last


def compact_rows(tokens: Array, mask: Array, width: int) -> tuple[Array, Array, Array]:
    """Moves each row's real tokens to its end and keeps the last `width` columns.

    Args:
        tokens, mask: `[rows, T]` rows whose real tokens span at most `width` columns.
        width: the kept width (`row_width`).

    Returns:
        `(tokens [rows, width], mask [rows, width], shift [rows])`: column c of a row is
        column `c + shift` of the compacted row. Real tokens keep their order and RoPE
        positions (positions count real tokens), so every real token's hidden state is
        the one of the uncompacted row.
    """
    t = tokens.shape[-1]
    _, last = _real_span(mask)
    shift = jnp.where(last >= 0, t - 1 - last, 0) - (t - width)  # [rows]
    src = jnp.arange(width)[None, :] - shift[:, None]  # [rows, width]
    inside = (src >= 0) & (src < t)
    src = jnp.clip(src, 0, t - 1)
    tokens = jnp.where(inside, jnp.take_along_axis(tokens, src, axis=1), 0)
    mask = inside & jnp.take_along_axis(mask, src, axis=1)
    return tokens, mask, shift


def _hidden_at(hidden: Array, columns: Array, shift: Array | None) -> Array:
    """`hidden [rows, W, H]` at uncompacted `columns` (`[n]` static) -> `[rows, n, H]`."""
    if shift is None:
        return jax.lax.slice_in_dim(hidden, int(columns[0]), int(columns[-1]) + 1, axis=1)
    index = jnp.clip(columns[None, :] + shift[:, None], 0, hidden.shape[1] - 1)
    return jnp.take_along_axis(hidden, index[..., None], axis=1)


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


def _row_hidden(graphdef, base, lora, tokens: Array, mask: Array, adapter_ids: Array,
                remat: str, width: int | None) -> tuple[Array, Array | None]:
    """`(hidden [rows, T or width, H], shift [rows] or None)` of `[rows, T]` rows,
    compacted to `width` columns first when given (`compact_rows`)."""
    shift = None
    if width is not None:
        tokens, mask, shift = compact_rows(tokens, mask, width)
    return _hidden(graphdef, base, lora, tokens, mask, adapter_ids, remat), shift


def _agent_major(x: Array, a: int) -> Array:
    """`[R, A, E, ...]` -> `[A, E * R, ...]` (row `n` of agent `a` is `to_rows` row
    `n * A + a`)."""
    rows = to_rows(x)
    return jnp.swapaxes(rows.reshape((-1, a) + rows.shape[1:]), 0, 1)


def _prefix_window(graphdef, base, lora, prefix: Segments, obs_tokens: Array,
                   obs_mask: Array, action_tokens: Array, action_mask: Array,
                   adapter_ids: Array | int, remat: str,
                   obs_capacity: tuple[int, ...] | None = None) -> Array:
    """Hidden states at columns `O - 1 .. O + K - 2` of the `[obs ; action]` rows,
    `[rows, K, H]` in `to_rows` order, with each agent's prefix run once.

    Arguments as in `score_actions`. Without `obs_capacity` the rows are split as
    `flexmg.rollout.split_prefix` splits a wave (every agent one group, the prefixes run
    with the agents' adapters) and run in one pass at the team's widest remainder; with it,
    each agent's rows run in a pass of their own, keeping the last `obs_capacity[i] -
    len(prefix_i)` observation columns (where any of its remainders fits).
    A row whose observation is only its prefix reads its last observation token's hidden
    state from the prefix's pass; a row without observation tokens (never scored with real
    actions) attends to its agent's prefix.
    """
    r, a, e, o = obs_tokens.shape
    lengths = np.asarray(prefix.lengths)  # [A], static
    chex.assert_shape(lengths, (a,))
    if o <= int(lengths.min()):  # keep a remainder column: the last observation token
        pad = lambda x: jnp.pad(x, [(0, 0)] * 3 + [(1, 0)])
        obs_tokens, obs_mask = pad(obs_tokens), pad(obs_mask)
        o += 1
    ids = jnp.broadcast_to(jnp.asarray(adapter_ids, jnp.int32), (a,))
    obs_tokens, obs_mask = _agent_major(obs_tokens, a), _agent_major(obs_mask, a)
    action_tokens, action_mask = _agent_major(action_tokens, a), _agent_major(action_mask, a)
    if obs_capacity is None:
        windows = _group_window(graphdef, base, lora, prefix, tuple(range(a)), obs_tokens,
                                obs_mask, action_tokens, action_mask, ids, remat)
    else:
        chex.assert_equal(len(obs_capacity), a)
        windows = jnp.concatenate([_group_window(
            graphdef, base, lora, prefix, (i,), obs_tokens[i:i + 1], obs_mask[i:i + 1],
            action_tokens[i:i + 1], action_mask[i:i + 1], ids, remat,
            keep=remainder_columns(min(o, obs_capacity[i]), lengths[i])) for i in range(a)])
    # [A, E * R, K, H] agent-major -> [rows, K, H] in `to_rows` order (row n * A + a).
    return jnp.swapaxes(windows, 0, 1).reshape((-1,) + windows.shape[2:])


def _group_window(graphdef, base, lora, prefix: Segments, agents: tuple[int, ...],
                  obs_tokens: Array, obs_mask: Array, action_tokens: Array,
                  action_mask: Array, ids: Array, remat: str, keep: int | None = None
                  ) -> Array:
    """`_prefix_window` of `agents`' rows (`[W, N, ...]` agent-major) in one pass ->
    `[W, N, K, H]`; `keep`: the remainder columns kept (the last ones), None: all."""
    w_agents, n, _ = obs_tokens.shape
    k = action_tokens.shape[-1]
    lengths = np.asarray(prefix.lengths)[list(agents)]
    shared, rest, rest_mask = split_prefix(prefix, agents, obs_tokens, obs_mask, ids)
    if keep is not None and keep < rest.shape[-1]:  # real remainders end the rows
        rest, rest_mask = rest[:, -keep:], rest_mask[:, -keep:]
    w = rest.shape[-1]
    tokens, mask = concat_rows(rest, rest_mask, action_tokens.reshape(-1, k),
                               action_mask.reshape(-1, k))  # [W * N, w + K]
    mask = jnp.concatenate([shared.mask[shared.group], mask], axis=1)  # [W * N, L + w + K]
    group_hidden, hidden, _ = F.prefix_forward(graphdef, base, lora, shared, tokens, mask,
                                               ids[np.asarray(agents)][shared.group],
                                               remat=remat)
    # group_hidden [W, L, H], hidden [W * N, w + K, H]
    window = hidden[:, w - 1:w - 1 + k]  # [W * N, K, H]
    last = group_hidden[np.arange(w_agents), np.maximum(lengths - 1, 0)]  # [W, H]
    first = jnp.where(rest_mask[:, -1:], window[:, 0], last[shared.group])  # [W * N, H]
    return window.at[:, 0].set(first).reshape((w_agents, n) + window.shape[1:])


def _scored_hidden(graphdef, base, lora, obs_tokens: Array, obs_mask: Array,
                   action_tokens: Array, action_mask: Array, adapter_ids: Array | int,
                   remat: str, row_width: int | None, prefix: Segments | None,
                   obs_capacity: tuple[int, ...] | None = None
                   ) -> tuple[Array, Array | None, int]:
    """`(hidden, shift, origin)` of the `[obs ; action]` rows (`to_rows` order):
    `_hidden_at(hidden, columns - origin, shift)` reads columns ≥ O - 1 (see
    `score_actions` for the arguments)."""
    r, a, e, o = obs_tokens.shape
    if prefix is not None:
        if row_width is not None:
            raise ValueError("score_actions: a prefix excludes row_width")
        return _prefix_window(graphdef, base, lora, prefix, obs_tokens, obs_mask,
                              action_tokens, action_mask, adapter_ids, remat,
                              obs_capacity), None, o - 1
    tokens, mask = concat_rows(obs_tokens, obs_mask, action_tokens, action_mask)
    ids = _row_adapter_ids(adapter_ids, r, a, e)
    hidden, shift = _row_hidden(graphdef, base, lora, to_rows(tokens), to_rows(mask), ids,
                                remat, row_width)  # [rows, O + K or row_width, H]
    return hidden, shift, 0


def head_terms(graphdef, base, lora, hidden: Array, tokens: Array,
               chunk: int = 0) -> tuple[Array, Array]:
    """Log-probs of `tokens` and the policy's entropies from the LM head.

    Args:
        graphdef, base, lora: the split decoder.
        hidden: `[..., H]` final hidden states before each token.
        tokens: `[...]` int32 the tokens scored.
        chunk: 0 runs the head over every position at once (its float32 `[..., V]` logits
            and their softmax terms all alive in a backward pass); > 0 runs it over `chunk`
            positions at a time in a `lax.map` whose rematerialised body keeps only its
            inputs for the backward pass, so the head's memory is that of one chunk for
            one more head matmul. Same results up to float rounding.

    Returns:
        `(logprobs, entropy)`, float32 with the shape of `tokens`.
    """
    def terms(h, t):  # [n, H], [n]
        logp_all = jax.nn.log_softmax(F.lm_logits(graphdef, base, lora, h), axis=-1)
        logp = jnp.take_along_axis(logp_all, t[:, None], axis=-1)[:, 0]
        return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)

    shape = tokens.shape
    flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), tokens.reshape(-1)
    n = flat_t.shape[0]
    if chunk <= 0 or n <= chunk:
        logp, entropy = terms(flat_h, flat_t)
    else:
        pad = -n % chunk
        flat_h = jnp.pad(flat_h, ((0, pad), (0, 0))).reshape(-1, chunk, hidden.shape[-1])
        flat_t = jnp.pad(flat_t, (0, pad)).reshape(-1, chunk)
        logp, entropy = jax.lax.map(
            lambda xs: jax.checkpoint(terms, prevent_cse=False)(*xs), (flat_h, flat_t))
        logp, entropy = logp.reshape(-1)[:n], entropy.reshape(-1)[:n]
    return logp.reshape(shape), entropy.reshape(shape)


def score_actions(graphdef, base, lora, obs_tokens: Array, obs_mask: Array,
                  action_tokens: Array, action_mask: Array, adapter_ids: Array, *,
                  num_value_positions: int | None, remat: str = "none",
                  row_width: int | None = None, prefix: Segments | None = None,
                  obs_capacity: tuple[int, ...] | None = None, head_chunk: int = 0) -> Scores:
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
        row_width: score the rows compacted to this width (`compact_rows`; from
            `row_width`, host-side), None for the full `O + K`. Same results; the values
            at padded action positions (masked everywhere) may differ.
        prefix: every agent's observation prefix (`ObservationLayout.prefix`, `[A, ...]`
            host arrays; `ppo.shared_prefix`), run once per call and attended to by the
            rows' remainders; None: whole rows. Same results up to float rounding; excludes
            `row_width`.
        obs_capacity: with a prefix, each agent's longest observation (static,
            `RolloutConfig.agent_obs_tokens`): each agent's rows run in a pass of their own,
            `obs_capacity[i] - len(prefix_i)` remainder columns wide, instead of one pass at
            the team's widest remainder. Same results; ignored without a prefix.
        head_chunk: run the LM head over this many action positions at a time, each
            chunk's logits recomputed in the backward pass (`head_terms`; the update's
            `ppo.head_chunk`); 0: all positions at once.

    Returns:
        `Scores` with `[R, A, E, ...]` leading axes.
    """
    chex.assert_rank([obs_tokens, action_tokens], 4)
    r, a, e, o = obs_tokens.shape
    k = action_tokens.shape[-1]
    hidden, shift, origin = _scored_hidden(graphdef, base, lora, obs_tokens, obs_mask,
                                           action_tokens, action_mask, adapter_ids, remat,
                                           row_width, prefix, obs_capacity)
    before_action = _hidden_at(hidden, o - 1 - origin + np.arange(k), shift)  # [rows, K, H]
    token_logprobs, entropy = head_terms(graphdef, base, lora, before_action,
                                         to_rows(action_tokens), head_chunk)  # [rows, K]
    features = None
    if num_value_positions is not None:
        features = _hidden_at(hidden, critic_lib.value_columns(o, num_value_positions)
                              - origin, shift)
        features = from_rows(jax.lax.stop_gradient(features), r, a, e)
    return Scores(token_logprobs=from_rows(token_logprobs, r, a, e),
                  entropy=from_rows(entropy, r, a, e), features=features)


def trunk_features(graphdef, base, lora, obs_tokens: Array, obs_mask: Array,
                   action_tokens: Array, action_mask: Array, adapter_ids: Array,
                   num_value_positions: int, row_width: int | None = None,
                   prefix: Segments | None = None,
                   obs_capacity: tuple[int, ...] | None = None) -> Array:
    """Critic features only (no LM head): `[R, A, E, P, H]`, stop-gradient.

    Arguments as in `score_actions`; `num_value_positions` is 1 or K. With 1 (the
    action-level value, at the last observation token) only the observations and one
    action column run: under the causal mask the action tokens cannot change it.
    """
    r, a, e, o = obs_tokens.shape
    if num_value_positions == 1:
        action_tokens, action_mask = action_tokens[..., :1], action_mask[..., :1]
        if row_width is not None and row_width >= o + 1:
            row_width = None
    hidden, shift, origin = _scored_hidden(graphdef, base, lora, obs_tokens, obs_mask,
                                           action_tokens, action_mask, adapter_ids, "none",
                                           row_width, prefix, obs_capacity)
    feats = _hidden_at(hidden, critic_lib.value_columns(o, num_value_positions) - origin,
                       shift)
    return from_rows(jax.lax.stop_gradient(feats), r, a, e)


def observation_features(graphdef, base, lora, obs_tokens: Array, obs_mask: Array,
                         adapter_id: Array | int) -> Array:
    """Features at the last token of left-padded observations `[E, O]` -> `[E, H]`.

    This is the bootstrap value's input: the value of a decision before any of its action
    tokens, the same position as `critic.value_columns` gives for token 0.
    """
    chex.assert_rank(obs_tokens, 2)
    e = obs_tokens.shape[0]
    ids = jnp.broadcast_to(jnp.asarray(adapter_id, jnp.int32), (e,))
    hidden = _hidden(graphdef, base, lora, obs_tokens.astype(jnp.int32),
                     obs_mask.astype(bool), ids)
    return jax.lax.stop_gradient(hidden[:, -1])
