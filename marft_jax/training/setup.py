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
from marft_jax.flexmg.game import ProblemTable
from marft_jax.flexmg.layout import ObservationLayout, observation_capacity, state_capacity
from marft_jax.flexmg.orchestration import host_router
from marft_jax.flexmg.rollout import RolloutConfig, make_rollout
from marft_jax.models.config import ModelConfig
from marft_jax.models.functional import init_model
from marft_jax.parallel import Plan
from marft_jax.sampling import (SamplerConfig, generate, generate_with_cache, init_cache,
                                model_config)
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
    """Loads the model and tokenizer, builds the tasks, the layout and the sampler config."""
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
    rollout_config = RolloutConfig(num_rounds=exp.rollout.num_rounds, horizon=horizon,
                                   obs_tokens=obs_tokens, action_tokens=k,
                                   reward_placement=exp.rollout.reward_placement, pad_id=pad,
                                   shared_prefix=exp.rollout.shared_prefix)
    exp = with_micro_batches(exp, cfg, rollout_config)
    sampler = SamplerConfig(max_new_tokens=k, top_k=exp.sampling.top_k,
                            top_p=exp.sampling.top_p, stop_token_ids=stop,
                            pad_token_id=pad, decode_chunk=exp.sampling.decode_chunk)
    router = None
    if team.orchestrator is not None:  # the task's own router, else the host-parsed text
        router = task.router or host_router(team, tokenizer)
    return RunSetup(exp=exp, model_config=cfg, graphdef=graphdef, base=base, lora=lora,
                    tokenizer=tokenizer, layout=layout, train=train, heldout=heldout,
                    sampler=sampler, rollout_config=rollout_config, state_size=state_size,
                    base_source=source, router=router)


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
        budget=memory.budget_bytes(exp.train.memory_budget_gb))
    logging.info("ppo.grad_accum_steps=0: %d micro-batches per minibatch fit the memory "
                 "budget", steps)
    return dataclasses.replace(exp, ppo=ppo.replace(grad_accum_steps=steps))


def make_generate_fn(setup: RunSetup, sampler: SamplerConfig | None = None,
                     plan: Plan | None = None):
    """`generate_fn(params=(base, lora), tokens, mask, adapter_ids, temps, max_new, key,
    prefix=None)`.

    With a `plan`, prompt rows are split over the env shards and the KV cache is laid out
    by `parallel.KV_CACHE_SPEC` (rows on data × fsdp, KV heads on tp).
    """
    config = sampler or setup.sampler
    graphdef = setup.graphdef

    def generate_fn(params, tokens, mask, adapter_ids, temperatures, max_new, key,
                    prefix=None):
        base, lora = params
        if plan is None:
            return generate(graphdef, base, lora, tokens, mask, adapter_ids, key, temperatures,
                            max_new, config=config, prefix=prefix)
        tokens, mask = plan.constrain_envs((tokens, mask), axis=0)
        width = tokens.shape[1] + (0 if prefix is None else prefix.length)
        cache = plan.constrain_kv_cache(init_cache(model_config(graphdef, base, lora),
                                                   tokens.shape[0], width, config))
        out, _ = generate_with_cache(graphdef, base, lora, tokens, mask, adapter_ids, key,
                                     temperatures, max_new, cache, config=config,
                                     prefix=prefix)
        return out

    return generate_fn


def make_team_rollout(setup: RunSetup, split: TaskSplit, config: RolloutConfig,
                      temperature: float, sampler: SamplerConfig | None = None,
                      plan: Plan | None = None):
    """The pure rollout of the team on `split` (see `flexmg.rollout.make_rollout`).

    With a `plan`, generation is laid out for its mesh and rewards are computed on each
    device's own environments (`Plan.per_env`).
    """
    reward_fn = split.reward_fn if plan is None else plan.per_env(split.reward_fn)
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
        text = setup.tokenizer.decode(actions[idx][mask[idx]]) if setup.tokenizer else ""
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
