"""Builds what a run needs from a finalized `Experiment`: model, tokenizer, team layout,
train / held-out tasks, the sampler and the rollouts."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable

import jax
import numpy as np

from marft_jax.envs.math.task import MathTask, build_math_task
from marft_jax.envs.tokens import (TokenTaskConfig, token_layout, token_problems,
                                   token_reward_fn)
from marft_jax.errors import ConfigError
from marft_jax.flexmg.game import ProblemTable
from marft_jax.flexmg.layout import (ObservationLayout, build_layout, observation_capacity,
                                     state_capacity)
from marft_jax.flexmg.rollout import RolloutConfig, make_rollout
from marft_jax.models.config import ModelConfig
from marft_jax.models.functional import init_model
from marft_jax.parallel import Plan
from marft_jax.sampling import (SamplerConfig, generate, generate_with_cache, init_cache,
                                model_config)
from marft_jax.training.config import Experiment


@dataclasses.dataclass(frozen=True)
class TaskSplit:
    """A problem table with its reward function; `math` is set for text tasks."""

    table: ProblemTable
    reward_fn: Callable[..., Any]
    math: MathTask | None = None

    @property
    def num_problems(self) -> int:
        return self.table.num_problems


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


def _model(exp: Experiment, vocab_needed: int):
    if exp.model_name == "tiny":
        fields = dict(exp.tiny)
        fields.setdefault("tie_word_embeddings", True)
        cfg = ModelConfig(dtype=exp.dtype, **fields)
        if cfg.vocab_size < vocab_needed:
            raise ConfigError(f"config field 'model.tiny.vocab_size': the token task with "
                              f"task.num_symbols={exp.task['num_symbols']} and a team of "
                              f"{exp.team.num_agents} agents needs {vocab_needed} token ids "
                              f"(symbols + one per agent + 3), got {cfg.vocab_size}")
        graphdef, base, lora = init_model(cfg, exp.lora, seed=exp.seed)
        return cfg, graphdef, base, lora, None, "tiny"
    from marft_jax.models.weights import load_model
    from marft_jax.tokenizer import Tokenizer

    m = load_model(exp.model_name, dtype=exp.dtype, lora=exp.lora, seed=exp.seed)
    tokenizer = Tokenizer.from_model_source(m.source)
    return m.config, m.graphdef, m.base, m.lora, tokenizer, str(m.source.path)


def _math_problems(exp: Experiment):
    from marft_jax.envs.math.arithmetic import ArithmeticTaskConfig, generate_split
    from marft_jax.envs.math.datasets import load_math_dataset

    t = exp.task
    if t["kind"] == "arithmetic":
        try:
            cfg = ArithmeticTaskConfig(digits=t["digits"], terms=t["terms"], ops=tuple(t["ops"]),
                                       templates=t["templates"])
        except ConfigError as e:
            raise ConfigError(f"config field 'task': {e}") from None
        return generate_split(cfg, t["train_problems"], t["heldout_problems"],
                              t.get("split_seed", 0))
    train = load_math_dataset(t["dataset"], t["train_split"])[:t["train_problems"]]
    heldout = load_math_dataset(t["dataset"], t["eval_split"])[:t["heldout_problems"]]
    return train, heldout


def _code_splits(exp: Experiment, tokenizer, answer_mask) -> tuple[TaskSplit, TaskSplit | None]:
    """The code task's train split (reward: fraction of tests passed) and held-out split
    (reward: all tests pass, so accuracy and pass@k are pass/fail)."""
    from marft_jax.envs.code.datasets import load_code_dataset
    from marft_jax.envs.code.sandbox import SandboxLimits
    from marft_jax.envs.code.task import build_code_task
    from marft_jax.envs.math.arithmetic import split_problems

    t = exp.task
    try:
        problems = load_code_dataset(t["dataset"])
    except ConfigError as e:
        raise ConfigError(f"config field 'task.dataset': {e}") from None
    try:
        train_problems, heldout_problems = split_problems(problems, t["heldout_problems"],
                                                          t.get("split_seed", 0))
    except ConfigError as e:
        raise ConfigError(f"config field 'task.heldout_problems': {e} ({t['dataset']!r})") \
            from None
    train_problems = train_problems[:t["train_problems"]]
    if not train_problems:
        raise ConfigError(f"config field 'task.heldout_problems': {t['heldout_problems']} of "
                          f"the {len(problems)} problems of {t['dataset']!r} held out leave "
                          "none to train on")
    timeout = float(t["code_timeout_s"])
    limits = SandboxLimits(timeout_s=timeout, cpu_s=max(1, int(timeout)),
                           memory_mb=int(t["code_memory_mb"]))
    splits = []
    for chosen, reward in ((train_problems, "fraction"), (heldout_problems, "pass")):
        if not chosen:
            splits.append(None)
            continue
        task = build_code_task(chosen, tokenizer, limits, t["code_workers"], reward)
        splits.append(TaskSplit(task.table, task.reward_fn(tokenizer, answer_mask)))
    return splits[0], splits[1]


def build_setup(exp: Experiment) -> RunSetup:
    """Loads the model and tokenizer, builds the tasks, the layout and the sampler config."""
    k = exp.sampling["max_new_tokens"]
    team = exp.team
    if exp.task["kind"] == "tokens":
        token_cfg = TokenTaskConfig(num_symbols=exp.task["num_symbols"],
                                    num_agents=team.num_agents)
        cfg, graphdef, base, lora, tokenizer, source = _model(exp, token_cfg.vocab_needed)
        layout = token_layout(token_cfg)
        table = token_problems(token_cfg)
        train = TaskSplit(table, token_reward_fn(token_cfg))
        heldout = TaskSplit(table, token_reward_fn(token_cfg))
        stop, pad = (), 0
    else:
        cfg, graphdef, base, lora, tokenizer, source = _model(exp, 0)
        if tokenizer is None:
            raise ConfigError("config field 'model.name': text tasks need a real model with a "
                              "tokenizer (use task.kind='tokens' with the tiny model)")
        layout = build_layout(team, tokenizer, exp.layout)
    if exp.task["kind"] == "code":
        train, heldout = _code_splits(exp, tokenizer, team.answer_mask)
        stop, pad = tuple(tokenizer.stop_token_ids), tokenizer.pad_token_id
    elif exp.task["kind"] != "tokens":
        train_problems, heldout_problems = _math_problems(exp)
        grader = exp.task.get("grader", "builtin")
        train_task = build_math_task(train_problems, tokenizer, grader=grader)
        train = TaskSplit(train_task.table, train_task.reward_fn(tokenizer, team.answer_mask),
                          train_task)
        heldout = None
        if heldout_problems:
            h = build_math_task(heldout_problems, tokenizer, grader=grader)
            heldout = TaskSplit(h.table, h.reward_fn(tokenizer, team.answer_mask), h)
        stop, pad = tuple(tokenizer.stop_token_ids), tokenizer.pad_token_id
    problem_tokens = max(train.table.tokens.shape[1],
                         heldout.table.tokens.shape[1] if heldout else 0)
    horizon = exp.rollout.horizon
    # The state buffer holds all `horizon` rounds (the last one is appended before the
    # reset); an observation sees at most `horizon - 1` rounds of history.
    state_size = state_capacity(layout, problem_tokens, k, team.num_agents, horizon)
    observed_state = state_capacity(layout, problem_tokens, k, team.num_agents, horizon - 1)
    max_preds = max((len(d) for d in team.dependencies), default=0)
    needed = observation_capacity(layout, observed_state, k, max_preds)
    obs_tokens = int(exp.config.rollout.obs_tokens)
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
    rollout_config = dataclasses.replace(exp.rollout, pad_id=pad, obs_tokens=obs_tokens)
    sampler = SamplerConfig(max_new_tokens=k, top_k=exp.sampling["top_k"],
                            top_p=exp.sampling["top_p"], stop_token_ids=stop,
                            pad_token_id=pad)
    return RunSetup(exp=exp, model_config=cfg, graphdef=graphdef, base=base, lora=lora,
                    tokenizer=tokenizer, layout=layout, train=train, heldout=heldout,
                    sampler=sampler, rollout_config=rollout_config, state_size=state_size,
                    base_source=source)


def make_generate_fn(setup: RunSetup, sampler: SamplerConfig | None = None,
                     plan: Plan | None = None):
    """`generate_fn(params=(base, lora), tokens, mask, adapter_ids, temps, max_new, key)`.

    With a `plan`, prompt rows are split over the env shards and the KV cache is laid out
    by `parallel.KV_CACHE_SPEC` (rows on data × fsdp, KV heads on tp).
    """
    config = sampler or setup.sampler
    graphdef = setup.graphdef

    def generate_fn(params, tokens, mask, adapter_ids, temperatures, max_new, key):
        base, lora = params
        if plan is None:
            return generate(graphdef, base, lora, tokens, mask, adapter_ids, key, temperatures,
                            max_new, config=config)
        tokens, mask = plan.constrain_envs((tokens, mask), axis=0)
        cache = plan.constrain_kv_cache(init_cache(model_config(graphdef, base, lora),
                                                   tokens.shape[0], tokens.shape[1], config))
        out, _ = generate_with_cache(graphdef, base, lora, tokens, mask, adapter_ids, key,
                                     temperatures, max_new, cache, config=config)
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
                        max_new_tokens=setup.exp.sampling["max_new_tokens"],
                        temperature=temperature)


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
