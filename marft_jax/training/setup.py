"""Builds what a run needs from a finalized `Experiment`: model, tokenizer, team layout,
train / held-out tasks, the sampler and the rollouts."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from marft_jax.algorithms import memory
from marft_jax.envs.registry import TaskSplit, get_task
from marft_jax.errors import ConfigError
from marft_jax.flexmg.game import ProblemTable, init_game
from marft_jax.flexmg.hetero import make_hetero_rollout
from marft_jax.flexmg.layout import (ObservationLayout, agent_observation_capacities,
                                     observation_capacity, state_capacity)
from marft_jax.flexmg.orchestration import host_router
from marft_jax.flexmg.rollout import RolloutConfig, make_rollout
from marft_jax.models.config import ModelConfig
from marft_jax.models.functional import init_model
from marft_jax.parallel import Plan
from marft_jax.sampling import (SamplerConfig, generate, generate_with_cache, init_cache,
                                model_config)
from marft_jax.training.bases import LoadedBase, groups_for, load_base
from marft_jax.training.config import Experiment


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """Everything built from the config, before any training state exists."""

    exp: Experiment
    model_config: ModelConfig
    graphdef: Any
    base: Any
    lora: Any
    tokenizer: Any  # marft_jax.tokenizer.Tokenizer, or None for the token task
    layout: ObservationLayout
    train: TaskSplit
    heldout: TaskSplit | None
    sampler: SamplerConfig
    rollout_config: RolloutConfig
    state_size: int
    base_source: str
    router: Any = None  # orchestrated teams: `flexmg.orchestration.Router`, else None
    # Heterogeneous teams (`training.bases`): then graphdef, base, lora and layout are
    # tuples (one per base), model_config is the critic base's and tokenizer, sampler,
    # train / heldout's reward the first base's; see `HeteroParts` for the rest.
    hetero: Any = None  # HeteroParts or None


@dataclasses.dataclass(frozen=True)
class HeteroParts:
    """Per-base parts of a heterogeneous team's setup (index = base, `groups.names` order).

    Attributes:
        groups: which agent sits on which base, and the critic's base.
        model_configs, tokenizers, samplers, pad_ids, state_sizes, sources: per base.
        cross_width: C, the width of a response carried into another base as text.
    """

    groups: Any  # training.bases.BaseGroups
    model_configs: tuple[ModelConfig, ...]
    tokenizers: tuple[Any, ...]
    samplers: tuple[SamplerConfig, ...]
    pad_ids: tuple[int, ...]
    state_sizes: tuple[int, ...]
    sources: tuple[str, ...]
    cross_width: int

    def tokenizer_of(self, agent: int):
        """The tokenizer of `agent`'s base."""
        return self.tokenizers[self.groups.agent_base[agent]]


def _model(exp: Experiment, vocab_needed: int):
    """The model, its tokenizer (None on the token task with the tiny model) and its source.

    The tiny random decoder runs text tasks with the byte-level tokenizer (259 ids), so math
    and code teams can be trained end to end in seconds, without a model download.
    """
    if exp.model_name == "tiny":
        from marft_jax.tokenizer import Tokenizer

        fields = dict(exp.tiny)
        fields.setdefault("tie_word_embeddings", True)
        cfg = ModelConfig(dtype=exp.dtype, **fields)
        tokenizer = None if get_task(exp.task.kind).jax_native else \
            Tokenizer.byte_level()
        if tokenizer is not None and cfg.vocab_size < tokenizer.vocab_size:
            raise ConfigError(f"config field 'model.tiny.vocab_size': text tasks run the tiny "
                              f"model with the byte-level tokenizer ({tokenizer.vocab_size} "
                              f"ids), got {cfg.vocab_size}")
        if cfg.vocab_size < vocab_needed:
            raise ConfigError(f"config field 'model.tiny.vocab_size': the token task with "
                              f"task.num_symbols={exp.task.num_symbols} and a team of "
                              f"{exp.team.num_agents} agents needs {vocab_needed} token ids "
                              f"(symbols + one per agent + 3), got {cfg.vocab_size}")
        graphdef, base, lora = init_model(cfg, exp.lora, seed=exp.seed)
        return cfg, graphdef, base, lora, tokenizer, "tiny"
    from marft_jax.models.weights import load_model
    from marft_jax.tokenizer import Tokenizer

    m = load_model(exp.model_name, dtype=exp.dtype, lora=exp.lora, seed=exp.seed)
    tokenizer = Tokenizer.from_model_source(m.source)
    return m.config, m.graphdef, m.base, m.lora, tokenizer, str(m.source.path)


def build_setup(exp: Experiment) -> RunSetup:
    """Loads the model and tokenizer, builds the tasks, the layout and the sampler config
    (for a heterogeneous team, every base's: `build_hetero_setup`)."""
    groups = groups_for(exp)
    if groups is not None:
        return build_hetero_setup(exp, groups)
    k = exp.sampling.max_new_tokens
    team = exp.team
    spec = get_task(exp.task.kind)
    cfg, graphdef, base, lora, tokenizer, source = _model(exp, spec.vocab_needed(exp))
    task = spec.build(exp, tokenizer)
    layout, train, heldout = task.layout, task.train, task.heldout
    stop, pad = task.stop_token_ids, task.pad_id
    problem_tokens = max(train.table.tokens.shape[1],
                         heldout.table.tokens.shape[1] if heldout else 0)
    horizon = exp.rollout.horizon
    # The state buffer holds all `horizon` rounds (the last one is appended before the
    # reset); an observation sees at most `horizon - 1` rounds of history.
    state_size = state_capacity(layout, problem_tokens, k, team.num_agents, horizon)
    observed_state = state_capacity(layout, problem_tokens, k, team.num_agents, horizon - 1)
    max_preds = max((len(d) for d in team.dependencies), default=0)
    needed = observation_capacity(layout, observed_state, k, max_preds)
    obs_tokens = exp.rollout.obs_tokens
    if obs_tokens == 0:  # auto: the longest possible observation, rounded up to 32
        obs_tokens = -(-needed // 32) * 32
    elif obs_tokens < needed:
        raise ConfigError(f"config field 'rollout.obs_tokens': {obs_tokens} is too small; "
                          f"the longest observation of this team, task and horizon is "
                          f"{needed} tokens (0 = derive it)")
    context = cfg.max_position_embeddings
    if obs_tokens + k > context:  # the real limit on a team's size for a given model
        raise ConfigError(f"config field 'team.profiles': with a team of {team.num_agents} "
                          f"agents an observation is up to {obs_tokens} tokens, plus {k} "
                          f"generated, more than the model's context of {context} tokens; "
                          "use fewer agents, a shorter rollout.horizon or "
                          "sampling.max_new_tokens")
    agent_obs = agent_observation_capacities(layout, observed_state, k,
                                             [len(d) for d in team.dependencies])
    rollout_config = RolloutConfig(num_rounds=exp.rollout.num_rounds, horizon=horizon,
                                   obs_tokens=obs_tokens, action_tokens=k,
                                   reward_placement=exp.rollout.reward_placement, pad_id=pad,
                                   shared_prefix=exp.rollout.shared_prefix,
                                   agent_obs_tokens=agent_obs)
    exp = with_micro_batches(exp, cfg, rollout_config)
    sampler = SamplerConfig(max_new_tokens=k, top_k=exp.sampling.top_k,
                            top_p=exp.sampling.top_p, stop_token_ids=stop,
                            pad_token_id=pad, decode_chunk=exp.sampling.decode_chunk,
                            merge_adapter=exp.sampling.merge_adapter,
                            **sampling_dtypes(exp))
    router = None
    if team.orchestrator is not None:  # the task's own router, else the host-parsed text
        router = task.router or host_router(team, tokenizer)
    return RunSetup(exp=exp, model_config=cfg, graphdef=graphdef, base=base, lora=lora,
                    tokenizer=tokenizer, layout=layout, train=train, heldout=heldout,
                    sampler=sampler, rollout_config=rollout_config, state_size=state_size,
                    base_source=source, router=router)


def sampling_dtypes(exp: Experiment) -> dict[str, str | None]:
    """`SamplerConfig`'s compute dtypes from `sampling.dtype` ("" = the weights' own)."""
    dtype = exp.sampling.dtype or None
    return {"prefill_dtype": dtype, "decode_dtype": dtype}


def _obs_width(exp: Experiment, layout, problem_tokens: int, width: int) -> tuple[int, int]:
    """`(state buffer size, longest observation)` of the team on `layout` with actions of
    `width` tokens (the state holds all `horizon` rounds, an observation `horizon - 1`)."""
    team, horizon = exp.team, exp.rollout.horizon
    state_size = state_capacity(layout, problem_tokens, width, team.num_agents, horizon)
    observed_state = state_capacity(layout, problem_tokens, width, team.num_agents, horizon - 1)
    max_preds = max((len(d) for d in team.dependencies), default=0)
    return state_size, observation_capacity(layout, observed_state, width, max_preds)


def build_hetero_setup(exp: Experiment, groups) -> RunSetup:
    """`build_setup` of a heterogeneous team: every base loaded (`training.bases`), the task
    built once per base tokenizer (layouts and problem tables in each base's tokens; the
    reward is the first base's), one observation width for all (the widest)."""
    k = exp.sampling.max_new_tokens
    spec = get_task(exp.task.kind)
    cross = exp.rollout.cross_tokens or 2 * k
    width = max(k, cross)
    loaded, tasks = [], []
    for b, name in enumerate(groups.names):
        if name == exp.model_name:
            cfg, graphdef, base, lora, tokenizer, source = _model(exp, spec.vocab_needed(exp))
            loaded.append(LoadedBase(cfg, graphdef, base, lora, tokenizer, source))
        else:
            loaded.append(load_base(exp, name, b))
        tasks.append(spec.build(exp, loaded[-1].tokenizer))
    state_sizes, needed = [], 0
    for task in tasks:
        problem_tokens = max(task.train.table.tokens.shape[1],
                             task.heldout.table.tokens.shape[1] if task.heldout else 0)
        size, longest = _obs_width(exp, task.layout, problem_tokens, width)
        state_sizes.append(size)
        needed = max(needed, longest)
    obs_tokens = exp.rollout.obs_tokens or -(-needed // 32) * 32
    if obs_tokens < needed:
        raise ConfigError(f"config field 'rollout.obs_tokens': {obs_tokens} is too small; "
                          f"the longest observation of this team in any of its bases is "
                          f"{needed} tokens (0 = derive it)")
    for name, m in zip(groups.names, loaded):
        if obs_tokens + k > m.config.max_position_embeddings:
            raise ConfigError(f"config field 'team.profiles': an observation is up to "
                              f"{obs_tokens} tokens, plus {k} generated, more than the "
                              f"context of base {name!r} ({m.config.max_position_embeddings})")
    first = tasks[0]
    rollout_config = RolloutConfig(num_rounds=exp.rollout.num_rounds, horizon=exp.rollout.horizon,
                                   obs_tokens=obs_tokens, action_tokens=k,
                                   reward_placement=exp.rollout.reward_placement,
                                   pad_id=first.pad_id)
    largest = max(loaded, key=lambda m: m.config.hidden_size * m.config.num_layers)
    exp = with_micro_batches(exp, largest.config, rollout_config)
    samplers = tuple(SamplerConfig(max_new_tokens=k, top_k=exp.sampling.top_k,
                                   top_p=exp.sampling.top_p, stop_token_ids=t.stop_token_ids,
                                   pad_token_id=t.pad_id, **sampling_dtypes(exp))
                     for t in tasks)
    with_tables = lambda split, parts: None if split is None else dataclasses.replace(
        split, tables=tuple(parts))
    train = with_tables(first.train, [t.train.table for t in tasks])
    heldout = with_tables(first.heldout, [t.heldout.table for t in tasks]
                          if first.heldout else ())
    groups = dataclasses.replace(groups, sources=tuple(m.source for m in loaded))
    parts = HeteroParts(groups=groups, model_configs=tuple(m.config for m in loaded),
                        tokenizers=tuple(m.tokenizer for m in loaded), samplers=samplers,
                        pad_ids=tuple(t.pad_id for t in tasks), state_sizes=tuple(state_sizes),
                        sources=groups.sources, cross_width=cross)
    c = groups.critic_base
    return RunSetup(exp=exp, model_config=loaded[c].config,
                    graphdef=tuple(m.graphdef for m in loaded),
                    base=tuple(m.params for m in loaded), lora=tuple(m.lora for m in loaded),
                    tokenizer=loaded[0].tokenizer, layout=tuple(t.layout for t in tasks),
                    train=train, heldout=heldout, sampler=samplers[0],
                    rollout_config=rollout_config, state_size=max(state_sizes),
                    base_source=loaded[0].source, hetero=parts)


def start_game(setup: RunSetup, split: TaskSplit, num_envs: int, key: jax.Array | None,
               order: jax.Array | None = None, group_size: int = 1):
    """The initial game state of `num_envs` envs on `split` (see `flexmg.game.init_game`);
    a heterogeneous team's is a tuple, one per base (its tokens, the same problems)."""
    if setup.hetero is None:
        return init_game(setup.layout, split.table, num_envs, setup.state_size, key,
                         order=order, group_size=group_size)
    return tuple(init_game(layout, table, num_envs, size, key, order=order,
                           group_size=group_size)
                 for layout, table, size in zip(setup.layout, split.tables,
                                                setup.hetero.state_sizes))


def with_micro_batches(exp: Experiment, model_config: ModelConfig,
                       rollout_config: RolloutConfig) -> Experiment:
    """`exp` with `ppo.grad_accum_steps = 0` resolved from `train.memory_budget_gb`
    (`algorithms.memory`; sized for the untrimmed row width, the widest the update sees);
    unchanged when the count is set."""
    ppo = exp.ppo
    if ppo.grad_accum_steps:
        return exp
    steps = memory.choose_grad_accum_steps(
        model_config, rows_per_env=rollout_config.num_rounds * exp.team.num_agents,
        tokens=rollout_config.obs_tokens + rollout_config.action_tokens,
        action_tokens=rollout_config.action_tokens,
        envs_per_minibatch=exp.rollout.num_envs // ppo.num_minibatches, remat=ppo.remat,
        budget=memory.budget_bytes(exp.train.memory_budget_gb), head_chunk=ppo.head_chunk)
    logging.info("ppo.grad_accum_steps=0: %d micro-batches per minibatch fit the memory "
                 "budget", steps)
    return dataclasses.replace(exp, ppo=ppo.replace(grad_accum_steps=steps))


def make_generate_fn(setup: RunSetup, sampler: SamplerConfig | None = None,
                     plan: Plan | None = None, base_index: int | None = None):
    """`generate_fn(params=(base, lora), tokens, mask, adapter_ids, temps, max_new, key,
    prefix=None, one_adapter=None)` (of base `base_index` of a heterogeneous team).

    With a `plan`, prompt rows are split over the env shards and the KV cache is laid out
    by `parallel.KV_CACHE_SPEC` (rows on data × fsdp, KV heads on tp).
    """
    config = sampler or setup.sampler
    graphdef = setup.graphdef if base_index is None else setup.graphdef[base_index]

    def generate_fn(params, tokens, mask, adapter_ids, temperatures, max_new, key,
                    prefix=None, one_adapter=None):
        base, lora = params
        if plan is None:
            return generate(graphdef, base, lora, tokens, mask, adapter_ids, key, temperatures,
                            max_new, config=config, prefix=prefix, one_adapter=one_adapter)
        tokens, mask = plan.constrain_envs((tokens, mask), axis=0)
        width = tokens.shape[1] + (0 if prefix is None else prefix.length)
        cache = plan.constrain_kv_cache(init_cache(model_config(graphdef, base, lora),
                                                   tokens.shape[0], width, config))
        out, _ = generate_with_cache(graphdef, base, lora, tokens, mask, adapter_ids, key,
                                     temperatures, max_new, cache, config=config,
                                     prefix=prefix, one_adapter=one_adapter)
        return out

    return generate_fn


def make_team_rollout(setup: RunSetup, split: TaskSplit, config: RolloutConfig,
                      temperature: float, sampler: SamplerConfig | None = None,
                      plan: Plan | None = None):
    """The pure rollout of the team on `split` (see `flexmg.rollout.make_rollout`).

    With a `plan`, generation is laid out for its mesh and rewards are computed on each
    device's own environments (a JAX reward: `Plan.per_env`; a host reward: each process's
    own env shards, `flexmg.driver.grade_on_host`).
    """
    reward_fn = split.reward_fn if plan is None else plan.per_env(split.reward_fn)
    if setup.hetero is not None:
        h = setup.hetero
        samplers = h.samplers if sampler is None else tuple(
            dataclasses.replace(sampler, stop_token_ids=s.stop_token_ids,
                                pad_token_id=s.pad_token_id) for s in h.samplers)
        generate_fns = [make_generate_fn(setup, samplers[b], plan, b)
                        for b in range(h.groups.num_bases)]
        return make_hetero_rollout(setup.exp.team, h.groups, setup.layout, split.tables,
                                   generate_fns, reward_fn, h.tokenizers, h.pad_ids, config,
                                   h.cross_width,
                                   max_new_tokens=setup.exp.sampling.max_new_tokens,
                                   temperature=temperature)
    return make_rollout(setup.exp.team, setup.layout, split.table,
                        make_generate_fn(setup, sampler, plan), reward_fn, config,
                        max_new_tokens=setup.exp.sampling.max_new_tokens,
                        temperature=temperature, router=setup.router)


def word_counts(setup: RunSetup, traj) -> np.ndarray:
    """`[R, A, E]` whitespace-separated word counts of every response (for `word` norm)."""
    actions = np.asarray(traj.action_tokens)
    mask = np.asarray(traj.action_mask)
    counts = np.zeros(actions.shape[:3], np.float32)
    for idx in np.ndindex(*actions.shape[:3]):
        tok = setup.tokenizer if setup.hetero is None else setup.hetero.tokenizer_of(idx[1])
        text = tok.decode(actions[idx][mask[idx]]) if tok else ""
        counts[idx] = max(1, len(text.split()))
    return counts


class Phase(enum.IntEnum):
    """The phases of a run, folded into its root key (`sampling_key(root, phase, ...)`)."""

    INIT_CRITIC = 0
    INIT_GAME = 1
    ROLLOUT = 2
    UPDATE = 3
    EVAL = 4
    ROLLBACK = 5


def sampling_key(root: jax.Array, *path: int) -> jax.Array:
    """`fold_in` along a path of integers (iteration, phase, ...)."""
    for p in path:
        root = jax.random.fold_in(root, p)
    return root
