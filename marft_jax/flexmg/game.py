"""The Flex-MG game state and its pure transition (text tasks in token space).

Every environment holds a growing token buffer (the shared state: the problem, then each
round's actions and the judge's verdict). An episode ends when the task score is positive
or after `horizon` rounds; a finished environment is reset at once with the next problem
from a key-derived order, as the reference's auto-resetting vector env does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from marft_jax.flexmg import token_ops
from marft_jax.flexmg.env_axes import env_field
from marft_jax.flexmg.layout import ObservationLayout, Segments

Array = jax.Array


@struct.dataclass
class ProblemTable:
    """Pre-tokenised problems: `tokens [P, Lp]` int32 right-padded, `lengths [P]` int32."""

    tokens: Array
    lengths: Array

    @property
    def num_problems(self) -> int:
        return self.tokens.shape[0]


@struct.dataclass
class GameState:
    """State of E environments.

    Attributes:
        tokens: `[E, S]` int32, the shared state text in tokens, right-padded.
        length: `[E]` int32, tokens in use.
        round: `[E]` int32, rounds played in the current episode.
        problem_id: `[E]` int32, index into the problem table.
        order: `[P]` int32, the key-derived order problems are drawn in.
        cursor: scalar int32, problems drawn so far (the data cursor, checkpointed).
        overflow: `[E]` bool, the state buffer was too small at some point (a config error).
        group_size: static; consecutive envs in groups of this size play the same problem
            and reset together (GRPO's samples per problem; 1 = independent envs).
    """

    # env_field(env axis, rank): where `parallel.Plan` splits the environments.
    tokens: Array = env_field(0, 2)
    length: Array = env_field(0, 1)
    round: Array = env_field(0, 1)
    problem_id: Array = env_field(0, 1)
    order: Array = env_field(None, 1)  # replicated: every env draws from it
    cursor: Array = env_field(None, 0)  # replicated
    overflow: Array = env_field(0, 1)
    group_size: int = struct.field(pytree_node=False, default=1)

    @property
    def num_envs(self) -> int:
        return self.tokens.shape[0]


def _seg(segments: Segments, i) -> tuple[Array, Array]:
    return jnp.asarray(segments.tokens)[i], jnp.asarray(segments.lengths)[i]


def _start_state(layout: ObservationLayout, problems: ProblemTable, problem_id: Array,
                 size: int) -> tuple[Array, Array]:
    """`state_0` of one env: problem_open + problem + problem_close, right-padded `[size]`."""
    return token_ops.concat_segments(size, [
        _seg(layout.problem_open, 0),
        (problems.tokens[problem_id], problems.lengths[problem_id]),
        _seg(layout.problem_close, 0),
    ])


def init_game(layout: ObservationLayout, problems: ProblemTable, num_envs: int,
              state_size: int, key: Array | None, order: Array | None = None,
              group_size: int = 1) -> GameState:
    """Starts `num_envs` episodes with problems drawn in a key-derived order.

    Args:
        key: draws the problem order (a permutation); unused when `order` is given.
        order: `[P]` an explicit problem order (evaluation walks the table in order).
        group_size: consecutive envs in groups of this size share each problem (GRPO).
    """
    # The contract; the config's check, naming ppo.group_size, is in training/config.py.
    if group_size < 1 or num_envs % group_size:
        raise ValueError(f"num_envs={num_envs} is not a multiple of group_size={group_size}")
    if order is None:
        order = jax.random.permutation(key, problems.num_problems)
    order = jnp.asarray(order, jnp.int32)
    ids = order[(jnp.arange(num_envs) // group_size) % problems.num_problems]
    tokens, length = jax.vmap(lambda p: _start_state(layout, problems, p, state_size))(ids)
    return GameState(tokens=tokens, length=length, round=jnp.zeros((num_envs,), jnp.int32),
                     problem_id=ids, order=order,
                     cursor=jnp.asarray(num_envs // group_size, jnp.int32),
                     overflow=jnp.zeros((num_envs,), bool), group_size=group_size)


def transition(game: GameState, layout: ObservationLayout, problems: ProblemTable,
               actions: Array, action_lengths: Array, decision_order: tuple[int, ...],
               score: Array, horizon: int, acted: Array | None = None,
               stop: Array | None = None) -> tuple[GameState, Array]:
    """Applies one round's joint action.

    Args:
        game: the state before the round.
        actions: `[A, E, K]` int32 responses (profile order), right-padded.
        action_lengths: `[A, E]` int32.
        decision_order: the order agents acted in (history lines follow it).
        score: `[E]` float32 task score of this round.
        horizon: maximum rounds per episode.
        acted: `[A, E]` bool, agents that acted this round (an orchestrated team); the
            others leave no line in the history. None = all.
        stop: `[E]` bool, the orchestrator ended the episode. None = never.

    Returns:
        `(next state with finished envs reset, done [E] bool)`.
    """
    size = game.tokens.shape[1]
    correct = score > 0

    def grow(tokens, length, acts, lens, ok, on):
        over = jnp.zeros((), bool)
        for i in decision_order:
            for seg, seg_len in (_seg(layout.hist_open, i), (acts[i], lens[i]),
                                 _seg(layout.hist_close, 0)):
                if on is not None:
                    seg_len = jnp.where(on[i], seg_len, 0)
                over |= token_ops.overflowed(length, seg_len, size)
                tokens, length = token_ops.append(tokens, length, seg, seg_len)
        judge, judge_len = _seg(layout.judge, ok.astype(jnp.int32))
        over |= token_ops.overflowed(length, judge_len, size)
        tokens, length = token_ops.append(tokens, length, judge, judge_len)
        return tokens, length, over

    tokens, length, over = jax.vmap(grow, in_axes=(0, 0, 1, 1, 0, 1))(
        game.tokens, game.length, actions, action_lengths, correct, acted)
    rounds = game.round + 1
    done = correct | (rounds >= horizon)
    if stop is not None:
        done = done | stop
    g = game.group_size
    # A group's episode is over when every member's is (with one-round episodes, always).
    group_done = jnp.all(done.reshape(-1, g), axis=1)  # [E / g]
    done = jnp.repeat(group_done, g)

    # Reset finished groups with the next problems in the drawn order.
    rank = jnp.repeat(jnp.cumsum(group_done.astype(jnp.int32)) - 1, g)
    next_ids = game.order[(game.cursor + rank) % problems.num_problems]
    new_ids = jnp.where(done, next_ids, game.problem_id)
    fresh_tokens, fresh_length = jax.vmap(lambda p: _start_state(layout, problems, p, size))(new_ids)
    tokens = jnp.where(done[:, None], fresh_tokens, tokens)
    length = jnp.where(done, fresh_length, length)
    next_game = GameState(tokens=tokens, length=length, round=jnp.where(done, 0, rounds),
                          problem_id=new_ids, order=game.order,
                          cursor=game.cursor + jnp.sum(group_done.astype(jnp.int32)),
                          overflow=game.overflow | over, group_size=g)
    return next_game, done


def observe(game: GameState, layout: ObservationLayout, agent: int, actions: Array,
            action_lengths: Array, visible: Array, decision_order: tuple[int, ...], size: int,
            pad_id: int) -> tuple[Array, Array, Array]:
    """Observation of `agent` in every env, left-padded to `size` tokens.

    Args:
        agent: profile index of the acting agent (static).
        actions: `[A, E, K]` this round's responses so far.
        action_lengths: `[A, E]`.
        visible: `[E, A]` bool, which agents' outputs this agent sees this round (its
            dependencies, possibly switched off per env by a dynamic topology).
        decision_order: agents in the order they act; visible outputs appear in this order.
        size: observation width O.

    Returns:
        `(tokens [E, O] int32, mask [E, O] bool, overflow [E] bool)`.
    """
    def one(state, state_len, acts, lens, vis):
        segments = [_seg(layout.prefix, agent), (state, state_len)]
        for j in decision_order:
            if j == agent:
                continue
            on = vis[j]
            for seg, seg_len in (_seg(layout.pred_open, j), (acts[j], lens[j]),
                                 _seg(layout.pred_close, 0)):
                segments.append((seg, jnp.where(on, seg_len, 0)))
        segments.append(_seg(layout.suffix, agent))
        total = sum(seg_len for _, seg_len in segments)
        buffer, length = token_ops.concat_segments(size, segments)
        tokens, mask = token_ops.to_left_padded(buffer, length, pad_id)
        return tokens, mask, total > size

    return jax.vmap(one, in_axes=(0, 0, 1, 1, 0))(game.tokens, game.length, actions,
                                                  action_lengths, visible)
