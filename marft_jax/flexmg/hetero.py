"""The rollout of a heterogeneous team: agents on different base models.

Every base keeps its own game state (the shared text in its own tokens) and its own
observation layout (its chat template); problems are pre-tokenised per base with aligned
problem ids, so the bases' game states stay in step (the same problems, rounds, resets).
In each wave, agents are grouped by base and each base generates for its agents in ONE
sampler call with its own parameters. After a wave every new action is carried into every
other base as text: decoded with its own tokenizer and re-encoded with the other's, on the
host (`cross_tokens`, one `jax.pure_callback` per pair of bases), into a fixed width C;
tokens never cross. Observations, history lines and the critic's view are then assembled
in token space per base exactly as in `flexmg.rollout` (`observe`, `transition`).

A text longer than C tokens in the receiving base is cut to C (logged); C is
`rollout.cross_tokens` (0 = twice the response width).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import struct

from marft_jax.flexmg.driver import Rollout, stack_records
from marft_jax.flexmg.game import GameState, ProblemTable, observe, transition
from marft_jax.flexmg.layout import ObservationLayout
from marft_jax.flexmg.profiles import Team
from marft_jax.flexmg.rollout import RolloutConfig, place_rewards, wave_adapter
from marft_jax.flexmg.trajectory import Trajectory

Array = jax.Array


def cross_tokens(source: Any, target: Any, width: int, pad_id: int) -> Callable:
    """`cross(tokens [N, E, K], lengths [N, E]) -> (tokens [N, E, width], lengths [N, E])`:
    responses in `source`'s tokens as text in `target`'s tokens (host, under jit).

    Special tokens (the stop token) are dropped with the decode; a text longer than `width`
    target tokens is cut (and logged).
    """
    def host(tokens: np.ndarray, lengths: np.ndarray):
        tokens, lengths = np.asarray(tokens), np.asarray(lengths)
        out = np.full(tokens.shape[:2] + (width,), pad_id, np.int32)
        out_len = np.zeros(tokens.shape[:2], np.int32)
        cut = 0
        for idx in np.ndindex(*tokens.shape[:2]):
            text = source.decode(tokens[idx][:int(lengths[idx])].tolist())
            ids = target.encode(text)
            cut += len(ids) > width
            ids = ids[:width]
            out[idx][:len(ids)] = ids
            out_len[idx] = len(ids)
        if cut:
            logging.warning("heterogeneous team: %d responses cut to rollout.cross_tokens=%d "
                            "tokens of another base", cut, width)
        return out, out_len

    def cross(tokens: Array, lengths: Array) -> tuple[Array, Array]:
        n, e = tokens.shape[:2]
        shapes = (jax.ShapeDtypeStruct((n, e, width), jnp.int32),
                  jax.ShapeDtypeStruct((n, e), jnp.int32))
        return jax.pure_callback(host, shapes, tokens, lengths, vmap_method="sequential")

    return cross


@struct.dataclass
class HeteroPlay:
    """What the waves of one heterogeneous round produced (`RoundPlay`'s fields, per base).

    Attributes:
        obs, obs_mask: `[A, E, O]` each decision's observation in its own base's tokens.
        actions, action_mask: `[A, E, K]`; behaviour_logprobs, policy_logprobs: `[A, E, K]`.
        critic_obs, critic_mask: `[A, E, O]` each decision's observation in the critic base.
        base_actions, base_lengths: per base, every response in that base's tokens
            (`[A, E, max(K, C)]`, `[A, E]`); None once recorded.
        overflow: per base, `[E]` the game's overflow flags; None once recorded.
    """

    obs: Array
    obs_mask: Array
    actions: Array
    action_mask: Array
    behaviour_logprobs: Array
    policy_logprobs: Array
    critic_obs: Array
    critic_mask: Array
    base_actions: tuple[Array, ...] | None
    base_lengths: tuple[Array, ...] | None
    overflow: tuple[Array, ...] | None

    def recorded(self) -> HeteroPlay:
        """What the trajectory keeps of the round."""
        return self.replace(base_actions=None, base_lengths=None, overflow=None)


def make_hetero_rollout(team: Team, groups: Any, layouts: Sequence[ObservationLayout],
                        tables: Sequence[ProblemTable], generate_fns: Sequence[Callable],
                        reward_fn: Callable, tokenizers: Sequence[Any],
                        pad_ids: Sequence[int], config: RolloutConfig, cross_width: int, *,
                        max_new_tokens: int | None = None, temperature: float = 0.5,
                        reward_base: int = 0):
    """Builds the `flexmg.driver.Rollout` `rollout((bases, loras), games, key) ->
    (games, Trajectory)` (the crossing of texts between bases runs as host callbacks inside
    `act`).

    Args:
        team: the agents (no orchestrator).
        groups: `training.bases.BaseGroups`, the base of each agent and the critic's base.
        layouts, tables, generate_fns, tokenizers, pad_ids: per base (its observation
            segments, its problem table, its sampler `generate_fn((base, lora), ...)` as in
            `flexmg.rollout`, its tokenizer, its padding id).
        reward_fn: grades actions in base `reward_base`'s tokens (the task's tokenizer).
        config: static sizes; `obs_tokens` is the widest base's, `action_tokens` K.
        cross_width: C, the width of a response carried into another base.
        max_new_tokens, temperature: defaults of the per-agent budgets / temperatures.

    Returns:
        The rollout; `games` is a tuple of `GameState`s, one per base, and the trajectory
        carries `critic_obs_tokens` (every decision's observation in the critic base).
    """
    graph = team.graph
    num_agents, k, nb = team.num_agents, config.action_tokens, groups.num_bases
    width = max(k, cross_width)  # every base's action buffer: own [K] or crossed [C]
    order = tuple(graph.order)
    agent_base = groups.agent_base
    critic = groups.critic_base
    adapter_of = np.asarray(team.adapter_index, np.int32)
    budgets = np.minimum(np.asarray(team.max_new_tokens_per_agent(max_new_tokens or k)), k)
    temps = np.asarray(team.temperature_per_agent(temperature), np.float32)
    answer_mask = np.asarray(team.answer_mask, bool)
    crossers = {(a, b): cross_tokens(tokenizers[a], tokenizers[b], width, pad_ids[b])
                for a in range(nb) for b in range(nb) if a != b}

    def act(params, games: tuple[GameState, ...], key: Array):
        bases, loras = params
        e = games[0].num_envs
        visible = jnp.broadcast_to(jnp.asarray(graph.adjacency), (e, num_agents, num_agents))
        # Per base: every agent's action so far in that base's tokens.
        acts = [jnp.full((num_agents, e, width), pad_ids[b], jnp.int32) for b in range(nb)]
        lens = [jnp.zeros((num_agents, e), jnp.int32) for _ in range(nb)]
        actions = jnp.zeros((num_agents, e, k), jnp.int32)
        action_mask = jnp.zeros((num_agents, e, k), bool)
        blp = jnp.zeros((num_agents, e, k), jnp.float32)
        plp = jnp.zeros((num_agents, e, k), jnp.float32)
        obs = jnp.zeros((num_agents, e, config.obs_tokens), jnp.int32)
        obs_mask = jnp.zeros((num_agents, e, config.obs_tokens), bool)
        critic_obs, critic_mask = obs, obs_mask
        overflow = [g.overflow for g in games]

        def view(b, i):
            out = observe(games[b], layouts[b], i, acts[b], lens[b], visible[:, i], order,
                          config.obs_tokens, pad_ids[b])
            overflow[b] = overflow[b] | out[2]
            return out[0], out[1]

        for w, wave in enumerate(graph.waves):
            for b in range(nb):
                members = tuple(i for i in wave if agent_base[i] == b)
                if not members:
                    continue
                parts = [view(b, i) for i in members]
                wave_obs = jnp.stack([p[0] for p in parts])  # [W_b, E, O]
                wave_mask = jnp.stack([p[1] for p in parts])
                rows = len(members) * e
                per_row = lambda values: jnp.repeat(
                    jnp.asarray(np.asarray(values)[list(members)]), e)  # [W_b * E]
                gen = generate_fns[b]((bases[b], loras[b]), wave_obs.reshape(rows, -1),
                                      wave_mask.reshape(rows, -1), per_row(adapter_of),
                                      per_row(temps), per_row(budgets),
                                      jax.random.fold_in(key, w * nb + b),
                                      one_adapter=wave_adapter(adapter_of, members))
                idx = jnp.asarray(members)
                shape = (len(members), e, k)
                gen_mask = gen.mask.reshape(shape)
                gen_len = jnp.sum(gen_mask, -1)  # [W_b, E]
                actions = actions.at[idx].set(gen.tokens.reshape(shape))
                action_mask = action_mask.at[idx].set(gen_mask)
                blp = blp.at[idx].set(gen.logprobs.reshape(shape))
                plp = plp.at[idx].set(gen.policy_logprobs.reshape(shape))
                obs = obs.at[idx].set(wave_obs)
                obs_mask = obs_mask.at[idx].set(wave_mask)
                own = jnp.where(gen_mask, gen.tokens.reshape(shape), pad_ids[b])
                acts[b] = acts[b].at[idx, :, :k].set(own)
                lens[b] = lens[b].at[idx].set(gen_len)
                for other in range(nb):  # the same responses as text in the other bases
                    if other != b:
                        crossed, crossed_len = crossers[(b, other)](own, gen_len)
                        acts[other] = acts[other].at[idx].set(crossed)
                        lens[other] = lens[other].at[idx].set(crossed_len)
            for i in wave:  # what the critic reads: the observation in the critic base
                if agent_base[i] == critic:
                    tokens, mask = obs[i], obs_mask[i]
                else:
                    tokens, mask = view(critic, i)
                critic_obs = critic_obs.at[i].set(tokens)
                critic_mask = critic_mask.at[i].set(mask)
        play = HeteroPlay(obs=obs, obs_mask=obs_mask, actions=actions, action_mask=action_mask,
                          behaviour_logprobs=blp, policy_logprobs=plp, critic_obs=critic_obs,
                          critic_mask=critic_mask, base_actions=tuple(acts),
                          base_lengths=tuple(lens), overflow=tuple(overflow))
        return play, (games[reward_base].problem_id, acts[reward_base], lens[reward_base])

    def settle(games: tuple[GameState, ...], play: HeteroPlay, correct: Array):
        score, rewards = place_rewards(correct, answer_mask, order[-1],
                                       config.reward_placement)  # correct: [A, E]
        next_games, done = [], None
        for b in range(nb):
            g, done = transition(games[b].replace(overflow=play.overflow[b]), layouts[b],
                                 tables[b], play.base_actions[b], play.base_lengths[b], order,
                                 score, config.horizon)
            next_games.append(g)
        return tuple(next_games), (play.recorded(), rewards, done, score)

    def finish(games: tuple[GameState, ...], records, stacked: bool = False):
        plays, rewards, dones, scores = stack_records(records, stacked)  # [R, ...]
        e = games[0].num_envs
        empty = jnp.zeros((num_agents, e, k), jnp.int32)
        next_obs, next_mask, _ = observe(games[critic], layouts[critic], order[0], empty,
                                         empty[..., 0], jnp.zeros((e, num_agents), bool),
                                         order, config.obs_tokens, pad_ids[critic])
        traj = Trajectory(obs_tokens=plays.obs, obs_mask=plays.obs_mask,
                          action_tokens=plays.actions, action_mask=plays.action_mask,
                          behaviour_logprobs=plays.behaviour_logprobs,
                          policy_logprobs=plays.policy_logprobs, rewards=rewards, dones=dones,
                          scores=scores, next_obs_tokens=next_obs, next_obs_mask=next_mask,
                          adapter_ids=jnp.asarray(adapter_of), critic_obs_tokens=plays.critic_obs,
                          critic_obs_mask=plays.critic_mask)
        return tuple(games), traj

    return Rollout(act=act, settle=settle, finish=finish, reward_fn=reward_fn,
                   num_rounds=config.num_rounds)
