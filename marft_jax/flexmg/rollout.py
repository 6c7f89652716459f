"""The Flex-MG rollout: rounds of waves, built as `flexmg.driver.Rollout` parts.

Each wave assembles its agents' observations from the game state in token space, generates
for all of its agents x envs in ONE batched call (each row with its own adapter), and writes
the actions into the round's buffers (`act`); the round is then graded, and `settle` places
the rewards and the pure transition advances (and resets) the environments.

The policy and the reward are functions passed in:
- `generate_fn(params, tokens [B, O], mask [B, O], adapter_ids [B], temperatures [B],
  max_new [B], key, prefix=None, one_adapter=None) -> Generation` (tokens / mask /
  logprobs / policy_logprobs `[B, K]`); with `RolloutConfig.shared_prefix` it gets each
  wave's agent prefixes as a `sampling.SharedPrefix` and the rows without them; a wave
  whose rows all run one adapter says which (`wave_adapter`; `sampling.generate`);
- `reward_fn(problem_ids [E], actions [A, E, K], lengths [A, E]) -> correct [A, E]` float32,
  either a JAX function (token tasks: the whole rollout is one jit) or a
  `flexmg.driver.HostReward` (text tasks: detokenise, extract, grade in NumPy between the
  round's jitted parts; see `flexmg.driver`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from marft_jax.errors import ConfigError
from marft_jax.flexmg.driver import Rollout, stack_records
from marft_jax.flexmg.game import GameState, ProblemTable, observe, transition
from marft_jax.flexmg.layout import ObservationLayout, Segments, remainder_columns
from marft_jax.flexmg.orchestration import Router, active_agents
from marft_jax.flexmg.profiles import Team
from marft_jax.flexmg.trajectory import Trajectory
from marft_jax.sampling.types import SharedPrefix
from marft_jax.validation import POSITIVE_INT

Array = jax.Array
# `reward_placement` (checked by `training.config.finalize`): the per-decision rewards
# `[A, E]` of a round from `(correct [A, E], answer [A, 1], score [E], last_agent)`.
_PLACE_REWARDS = {
    "last": lambda correct, answer, score, last: jnp.zeros_like(correct).at[last].set(score),
    "team": lambda correct, answer, score, last: jnp.broadcast_to(score, correct.shape),
    "answering": lambda correct, answer, score, last: correct * answer,
}
PLACEMENTS = tuple(_PLACE_REWARDS)


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Static sizes and rules of a rollout.

    Attributes:
        num_rounds: rounds collected per call (R; the reference's episode_length).
        horizon: rounds per episode before it is cut (reference default 3).
        obs_tokens: observation width O.
        action_tokens: response width K (the largest per-agent max_new_tokens).
        reward_placement: "last" (reference: the score to the last decision only), "team"
            (every agent gets the score) or "answering" (each answering agent gets its own
            correctness).
        pad_id: padding token id.
        shared_prefix: every env's observation of agent i starts with the layout's
            `prefix[i]` (its system prompt): prefill it once per agent and broadcast its
            keys and values to the envs (`sampling.SharedPrefix`) instead of prefilling it
            in every row. Same generations up to float rounding; the trajectory keeps the
            whole observations.
        agent_obs_tokens: each agent's longest observation (`[A]`, each ≤ `obs_tokens`;
            `flexmg.layout.agent_observation_capacities`), or None (`obs_tokens` for all):
            each wave prefills only the columns its agents' observations can fill, and the
            update scores each agent's rows at that width
            (`algorithms.scoring.score_actions(obs_capacity=...)`).
    """

    num_rounds: int = 1
    horizon: int = 3
    obs_tokens: int = 512
    action_tokens: int = 64
    reward_placement: str = "last"
    pad_id: int = 0
    shared_prefix: bool = False
    agent_obs_tokens: tuple[int, ...] | None = None

    def __post_init__(self):
        for name in ("num_rounds", "horizon", "obs_tokens", "action_tokens"):
            problem = POSITIVE_INT.problem(getattr(self, name))
            if problem:
                raise ConfigError(f"rollout config: field {name!r} {problem}")
        if self.reward_placement not in PLACEMENTS:
            raise ConfigError(f"rollout config: field 'reward_placement' is "
                              f"{self.reward_placement!r}; choose from {list(PLACEMENTS)}")
        if self.agent_obs_tokens is not None and not all(
                0 < n <= self.obs_tokens for n in self.agent_obs_tokens):
            raise ConfigError(f"rollout config: field 'agent_obs_tokens' "
                              f"{self.agent_obs_tokens} must lie in 1..obs_tokens "
                              f"({self.obs_tokens})")


@struct.dataclass
class RoundPlay:
    """What the waves of one round produced (`act`), before grading.

    Attributes:
        obs, obs_mask: `[A, E, O]` each decision's observation.
        actions, action_mask: `[A, E, K]` the responses; lengths: `[A, E]`.
        behaviour_logprobs, policy_logprobs: `[A, E, K]` (see `Trajectory`).
        features: `[A, E, H]` the prompts' final hidden states, or None.
        overflow: `[E]` the game's overflow flags after this round's observations.
        active: `[E, A]` agents called by the router this round (orchestrated), or None.
        stop: `[E]` the router ended the episode, or None.
    """

    obs: Array
    obs_mask: Array
    actions: Array
    action_mask: Array
    lengths: Array
    behaviour_logprobs: Array
    policy_logprobs: Array
    features: Array | None
    overflow: Array | None
    active: Array | None
    stop: Array | None

    def recorded(self) -> RoundPlay:
        """What the trajectory keeps of the round (the round-state fields dropped)."""
        return self.replace(overflow=None, active=None, stop=None)


def place_rewards(correct: Array, answer_mask: np.ndarray, last_agent: int,
                  placement: str) -> tuple[Array, Array]:
    """Task score and per-decision rewards of one round.

    Args:
        correct: `[A, E]` float32, each agent's answer graded (ignored for non-answerers).
        answer_mask: `[A]` bool, agents whose output is graded.
        last_agent: profile index of the last decision in the round.
        placement: see `RolloutConfig.reward_placement`.

    Returns:
        `(score [E], rewards [A, E])`; score = mean correctness over answering agents.
    """
    answer = jnp.asarray(answer_mask, jnp.float32)[:, None]  # [A, 1]
    score = jnp.sum(correct * answer, axis=0) / jnp.maximum(jnp.sum(answer), 1.0)  # [E]
    return score, _PLACE_REWARDS[placement](correct, answer, score, last_agent)


def place_rewards_acted(correct: Array, answer_mask: np.ndarray, order: tuple[int, ...],
                        placement: str, acted: Array) -> tuple[Array, Array]:
    """`place_rewards` for a round in which only the agents in `acted` `[A, E]` acted
    (an orchestrated team): the score averages the answering agents that acted, "last"
    means the last decision made in the round, and agents that did not act get 0."""
    acted = acted.astype(jnp.float32)
    answer = jnp.asarray(answer_mask, jnp.float32)[:, None] * acted  # [A, E]
    score = jnp.sum(correct * answer, axis=0) / jnp.maximum(jnp.sum(answer, axis=0), 1.0)
    if placement == "last":
        last = jnp.full(score.shape, order[0], jnp.int32)
        for agent in order:
            last = jnp.where(acted[agent] > 0, agent, last)
        rewards = (jnp.arange(correct.shape[0])[:, None] == last[None, :]) * score
    elif placement == "team":
        rewards = acted * score
    else:
        rewards = correct * answer
    return score, rewards.astype(jnp.float32)


def split_prefix(prefixes: Segments, wave: tuple[int, ...], obs: Array, mask: Array,
                 adapter_of: Array) -> tuple[SharedPrefix, Array, Array]:
    """A wave's observations as its agents' shared prefixes and the rows' remainders.

    Also the update's column split (`algorithms.scoring.score_actions(prefix=...)`, with
    every agent as the wave and the rounds × envs as E).

    Args:
        prefixes: every agent's prefix (`ObservationLayout.prefix`, host arrays).
        wave: the wave's agents (static).
        obs, mask: `[W, E, O]` left-padded observations, each starting with its agent's
            `layout.prefix` (a truncated observation keeps its prefix: it is cut at the end).
        adapter_of: `[A]` adapter of each agent (host or traced).

    Returns:
        `(prefix, tokens [W * E, O - L_min], mask [W * E, O - L_min])`: the prefix of agent
        `wave[w]` is group w (`[W, L_max]`, right-padded); a row's remainder is its
        observation without the prefix's columns (L_min: the wave's shortest prefix, so
        every remainder fits; the columns of a longer prefix are masked).
    """
    w, e, o = obs.shape
    lengths = np.asarray(prefixes.lengths)[list(wave)]  # [W], static
    l_min, l_max = int(lengths.min()), max(int(lengths.max()), 1)
    prefix_tokens = np.asarray(prefixes.tokens)[list(wave)][:, :l_max]
    prefix_mask = np.arange(l_max)[None, :] < lengths[:, None]
    start = o - jnp.sum(mask, axis=-1, dtype=jnp.int32)  # [W, E] first real column
    columns = jnp.arange(l_min, o)  # [O - L_min]
    own = columns[None, None, :] - start[..., None] >= jnp.asarray(lengths)[:, None, None]
    rest_mask = mask[..., l_min:] & own  # [W, E, O - L_min]
    prefix = SharedPrefix(tokens=jnp.asarray(prefix_tokens, jnp.int32),
                          mask=jnp.asarray(prefix_mask),
                          adapter_ids=jnp.asarray(adapter_of, jnp.int32)[np.asarray(wave)],
                          group=jnp.repeat(jnp.arange(w, dtype=jnp.int32), e))
    return (prefix, obs[..., l_min:].reshape(w * e, o - l_min),
            rest_mask.reshape(w * e, o - l_min))


def wave_adapter(adapter_of: np.ndarray, wave: tuple[int, ...]) -> int | None:
    """The adapter every row of a wave runs (its agents share one), else None (static)."""
    ids = {int(i) for i in np.asarray(adapter_of)[list(wave)]}
    return ids.pop() if len(ids) == 1 else None


def _wave_columns(config: RolloutConfig, wave: tuple[int, ...],
                  prefix_lengths: np.ndarray | None = None) -> int:
    """The last prompt columns a wave's rows need (their real tokens end every row).

    Whole observations: the wave's longest `config.agent_obs_tokens` (`obs_tokens` without
    them). Remainders after `split_prefix`: the longest observation less its agent's
    prefix. Leading columns that only pad change no generation (RoPE positions count real
    tokens), so a wave of short observations prefills and attends over fewer columns.
    """
    caps = config.agent_obs_tokens
    cap = lambda i: config.obs_tokens if caps is None else caps[i]
    if prefix_lengths is None:
        return max(cap(i) for i in wave)
    return max(remainder_columns(cap(i), prefix_lengths[i]) for i in wave)


def make_rollout(team: Team, layout: ObservationLayout, problems: ProblemTable,
                 generate_fn: Callable[..., Any], reward_fn: Callable[..., Any],
                 config: RolloutConfig, *, max_new_tokens: int | None = None,
                 temperature: float = 0.5,
                 topology_fn: Callable[[GameState], Array] | None = None,
                 router: Router | None = None):
    """Builds the team's `Rollout`: `rollout(params, game, key) -> (game, Trajectory)`.

    With a JAX `reward_fn` the rollout is one pure, jittable function; with a `HostReward`
    it runs through `Rollout.compile()` (jitted parts, grading on the host between them).

    Args:
        team: the agents, their adapters and the dependency graph.
        layout: observation token segments.
        problems: the pre-tokenised problem table.
        generate_fn, reward_fn: see the module docstring.
        config: static rollout sizes.
        max_new_tokens: default response budget (per-agent overrides from the profiles).
        temperature: default sampling temperature (per-agent overrides from the profiles).
        topology_fn: optional `game -> [E, A, A]` bool mask switching dependency edges off
            per env for this round (dynamic topologies); ANDed with the static graph.
        router: for an orchestrated team (`team.orchestrator`), reads the orchestrator's
            action after the first wave and chooses who acts this round and whether the
            episode ends (`flexmg.orchestration`); agents that do not act get an empty
            action (all-False action mask), are seen by no one and leave no history line.
    """
    if (router is None) != (team.orchestrator is None):
        raise ConfigError(f"{team.source}: an orchestrated team needs a router and only "
                          "an orchestrated team takes one")
    graph = team.graph
    num_agents, k = team.num_agents, config.action_tokens
    order = tuple(graph.order)
    adapter_of = np.asarray(team.adapter_index, np.int32)
    budgets = np.minimum(np.asarray(team.max_new_tokens_per_agent(max_new_tokens or k)), k)
    temps = np.asarray(team.temperature_per_agent(temperature), np.float32)
    answer_mask = np.asarray(team.answer_mask, bool)

    def visibility(game: GameState) -> Array:
        static = jnp.asarray(graph.adjacency)  # [A, A]
        if topology_fn is None:
            return jnp.broadcast_to(static, (game.num_envs, num_agents, num_agents))
        return graph.dependency_mask(topology_fn(game))

    def act(params, game: GameState, key: Array):
        e = game.num_envs
        visible = visibility(game)  # [E, A, A]
        actions = jnp.full((num_agents, e, k), config.pad_id, jnp.int32)
        lengths = jnp.zeros((num_agents, e), jnp.int32)
        action_mask = jnp.zeros((num_agents, e, k), bool)
        blp = jnp.zeros((num_agents, e, k), jnp.float32)
        plp = jnp.zeros((num_agents, e, k), jnp.float32)
        obs = jnp.zeros((num_agents, e, config.obs_tokens), jnp.int32)
        obs_mask = jnp.zeros((num_agents, e, config.obs_tokens), bool)
        features = None  # [A, E, H] once a generator gives the prompts' final hidden states
        overflow = game.overflow
        active = stop = None  # [E, A], [E]: set by the router after the orchestrator's wave
        for w, wave in enumerate(graph.waves):
            wave = tuple(wave)
            parts = [observe(game, layout, i, actions, lengths, visible[:, i], order,
                             config.obs_tokens, config.pad_id) for i in wave]
            wave_obs = jnp.stack([p[0] for p in parts])  # [W, E, O]
            wave_mask = jnp.stack([p[1] for p in parts])
            for p in parts:
                overflow = overflow | p[2]
            rows = len(wave) * e
            per_row = lambda values: jnp.repeat(jnp.asarray(np.asarray(values)[list(wave)]), e)  # [W*E]
            adapter = wave_adapter(adapter_of, wave)
            if config.shared_prefix:
                prefix, rest, rest_mask = split_prefix(layout.prefix, wave, wave_obs, wave_mask,
                                                       adapter_of)
                keep = _wave_columns(config, wave, layout.prefix.lengths)
                gen = generate_fn(params, rest[:, -keep:], rest_mask[:, -keep:],
                                  per_row(adapter_of), per_row(temps), per_row(budgets),
                                  jax.random.fold_in(key, w), prefix=prefix,
                                  one_adapter=adapter)
            else:
                keep = _wave_columns(config, wave)
                gen = generate_fn(params, wave_obs.reshape(rows, -1)[:, -keep:],
                                  wave_mask.reshape(rows, -1)[:, -keep:], per_row(adapter_of),
                                  per_row(temps), per_row(budgets), jax.random.fold_in(key, w),
                                  one_adapter=adapter)
            idx = jnp.asarray(wave)
            shape = (len(wave), e, k)
            gen_tokens, gen_mask = gen.tokens.reshape(shape), gen.mask.reshape(shape)
            gen_blp, gen_plp = gen.logprobs.reshape(shape), gen.policy_logprobs.reshape(shape)
            if active is not None:  # agents not called: no action, no decision
                on = active.T[idx][..., None]  # [W, E, 1]
                gen_tokens = jnp.where(on, gen_tokens, config.pad_id)
                gen_mask = gen_mask & on
                gen_blp, gen_plp = jnp.where(on, gen_blp, 0.0), jnp.where(on, gen_plp, 0.0)
            actions = actions.at[idx].set(gen_tokens)
            action_mask = action_mask.at[idx].set(gen_mask)
            lengths = lengths.at[idx].set(jnp.sum(gen_mask, -1).reshape(len(wave), e))
            blp = blp.at[idx].set(gen_blp)
            plp = plp.at[idx].set(gen_plp)
            obs = obs.at[idx].set(wave_obs)
            obs_mask = obs_mask.at[idx].set(wave_mask)
            if gen.prompt_features is not None:
                wave_features = gen.prompt_features.reshape(len(wave), e, -1)  # [W, E, H]
                if features is None:
                    features = jnp.zeros((num_agents,) + wave_features.shape[1:],
                                         wave_features.dtype)
                features = features.at[idx].set(wave_features)
            if router is not None and w == 0:  # the orchestrator acts alone in wave 0
                calls, stop = router(actions, lengths)
                active = active_agents(team, calls, stop)  # [E, A]
                visible = visible & active[:, None, :]
        play = RoundPlay(obs=obs, obs_mask=obs_mask, actions=actions, action_mask=action_mask,
                         lengths=lengths, behaviour_logprobs=blp, policy_logprobs=plp,
                         features=features, overflow=overflow, active=active, stop=stop)
        return play, (game.problem_id, actions, lengths)

    def settle(game: GameState, play: RoundPlay, correct: Array):
        if play.active is None:
            score, rewards = place_rewards(correct, answer_mask, order[-1],
                                           config.reward_placement)
            acted = None
        else:
            acted = play.active.T  # [A, E]
            score, rewards = place_rewards_acted(correct, answer_mask, order,
                                                 config.reward_placement, acted)
        next_game, done = transition(game.replace(overflow=play.overflow), layout, problems,
                                     play.actions, play.lengths, order, score, config.horizon,
                                     acted=acted, stop=play.stop)
        return next_game, (play.recorded(), rewards, done, score)

    def finish(game: GameState, records, stacked: bool = False):
        plays, rewards, dones, scores = stack_records(records, stacked)  # [R, ...]
        first = order[0]
        empty = jnp.zeros((num_agents, game.num_envs, k), jnp.int32)
        none_visible = jnp.zeros((game.num_envs, num_agents), bool)
        next_obs, next_mask, _ = observe(game, layout, first, empty, empty[..., 0],
                                         none_visible, order, config.obs_tokens, config.pad_id)
        traj = Trajectory(obs_tokens=plays.obs, obs_mask=plays.obs_mask,
                          action_tokens=plays.actions, action_mask=plays.action_mask,
                          behaviour_logprobs=plays.behaviour_logprobs,
                          policy_logprobs=plays.policy_logprobs, rewards=rewards, dones=dones,
                          scores=scores, next_obs_tokens=next_obs, next_obs_mask=next_mask,
                          adapter_ids=jnp.asarray(adapter_of), obs_features=plays.features)
        return game, traj

    return Rollout(act=act, settle=settle, finish=finish, reward_fn=reward_fn,
                   num_rounds=config.num_rounds)
