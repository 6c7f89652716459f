"""One training iteration: rollout -> batch preparation -> update, with phase timings.

`make_iteration(setup, plan)` is the iteration every caller runs: `loop.train` (one run,
on one device or a mesh), `seed_vmap` (every seed of a config inside one jitted,
seed-vmapped `lax.scan`) and the benchmarks in `benchmarks/`, so the benchmarks time the
code that trains. Keys follow the run's schedule: iteration `it` samples with
`sampling_key(root, Phase.ROLLOUT, it)` and updates with `sampling_key(root, Phase.UPDATE,
it)`.

The preparation between the phases runs on the host: `trim_padding` cuts the trajectory
to its longest real row (its output shapes depend on the values, so it needs concrete
arrays), and `logprob_norm="word"` counts the words of every response with the tokenizer.
An iteration traced inside `jax.jit` / `jax.vmap` (`host_steps=False`, seed_vmap) skips
both: it updates on the full-width trajectory (the same result: trimming drops only
padding columns, up to float rounding of the shorter reductions) and refuses word counts.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from marft_jax import hostmem
from marft_jax.algorithms import scoring
from marft_jax.algorithms.config import PPOConfig
from marft_jax.algorithms.update import make_update
from marft_jax.errors import ConfigError
from marft_jax.flexmg.trajectory import Trajectory, trim_padding
from marft_jax.parallel import Plan
from marft_jax.training.config import Experiment
from marft_jax.training.setup import (Phase, RunSetup, make_team_rollout, sampling_key,
                                      word_counts)

PHASES = ("rollout", "prepare", "update")


def problem_group_size(exp: Experiment) -> int:
    """Envs per problem: GRPO's group of samples, else 1."""
    return exp.ppo.group_size if exp.ppo.spec.advantage == "grpo" else 1


def rollout_metrics(traj: Trajectory) -> dict[str, Any]:
    """Scalar summaries of a trajectory (`response_tokens` is `[A]`)."""
    lengths = jnp.sum(traj.action_mask, axis=-1)  # [R, A, E]
    return {"score": jnp.mean(traj.scores),
            "reward": jnp.mean(jnp.sum(traj.rewards, axis=1)),
            "episodes_done": jnp.mean(traj.dones.astype(jnp.float32)),
            "response_tokens": jnp.mean(lengths, axis=(0, 2))}


class StepOutput(NamedTuple):
    """What one iteration returns.

    Attributes:
        state: the updated `TrainState`.
        game: the game state after the rollout.
        traj: the trajectory the update trained on (trimmed with host steps).
        record: `{"rollout": rollout_metrics, "update": update metrics}` (device arrays).
        seconds: wall-clock seconds per phase (`PHASES`) when timed, else empty. Never
            written to metrics.jsonl, so runs stay comparable.
    """

    state: Any
    game: Any
    traj: Trajectory
    record: dict[str, Any]
    seconds: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Iteration:
    """The phases of one iteration of a run (see `make_iteration`); calling it runs all.

    Attributes:
        setup: the run's setup.
        plan: the device plan (None: default placement).
        rollout: `rollout((base, lora), game, key) -> (game, trajectory)`.
        update: `make_update`'s jitted update.
        ppo: the update's configuration.
        host_steps: whether the host-side preparation runs (False when traced).
        compiled: the update's executables by call signature, with
            `train.release_host_memory` (`hostmem.compile_then_release`).
    """

    setup: RunSetup
    plan: Plan | None
    rollout: Callable
    update: Callable
    ppo: PPOConfig
    host_steps: bool
    compiled: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def _releases_host_memory(self) -> bool:
        return self.host_steps and self.setup.exp.train.release_host_memory

    def _release_host_memory(self) -> None:
        if self._releases_host_memory:
            hostmem.release_free_memory()

    def rollout_phase(self, base, state, game, root: jax.Array, it):
        """`(game, trajectory)` of iteration `it` with the state's adapters."""
        self._release_host_memory()
        return self.rollout((base, state.lora), game, sampling_key(root, Phase.ROLLOUT, it))

    def prepare(self, traj: Trajectory) -> tuple[Trajectory, jax.Array | None]:
        """`(trajectory, word counts [R, A, E] or None)` ready for the update."""
        if not self.host_steps:
            return traj, None
        traj = trim_padding(traj)
        if self.ppo.logprob_norm != "word":
            return traj, None
        actions = traj.replace(action_tokens=Plan.fetch(traj.action_tokens),
                               action_mask=Plan.fetch(traj.action_mask))
        words = word_counts(self.setup, actions)  # [R, A, E]
        return traj, (self.plan.place_envs(words, axis=2) if self.plan else words)

    def update_phase(self, base, state, traj: Trajectory, words, root: jax.Array, it,
                     fault: tuple[jax.Array, jax.Array] | None = None):
        """`(state, metrics)` of the update on a prepared trajectory."""
        self._release_host_memory()
        extra = () if fault is None else (fault,)
        width = None
        if self.host_steps and self.ppo.row_trim:
            width = scoring.row_width(traj.obs_mask, traj.action_mask)
        args = (state, base, traj, sampling_key(root, Phase.UPDATE, it), words, *extra)
        if self._releases_host_memory:
            return hostmem.compile_then_release(self.update, self.compiled, *args,
                                                row_width=width)
        return self.update(*args, row_width=width)

    def __call__(self, base, state, game, root: jax.Array, it, *,
                 fault: tuple[jax.Array, jax.Array] | None = None,
                 timed: bool = False) -> StepOutput:
        """Runs iteration `it` (0-based) of the run whose root key is `root`.

        Args:
            base: the frozen base weights.
            state: the `TrainState`.
            game: the `GameState` the rollout continues.
            root: the run's root key.
            it: the iteration index (an int, or traced under `lax.scan`).
            fault: the update's fault injection (tests), or None.
            timed: wait for each phase and record its wall-clock seconds (host only; the
                waits cost nothing where the next phase reads the previous one's result).

        Returns:
            A `StepOutput`.
        """
        if timed and not self.host_steps:
            raise ValueError("a traced iteration cannot be timed")
        seconds: dict[str, float] = {}
        clock = [time.perf_counter()]

        def lap(name, result):
            if timed:
                jax.block_until_ready(result)
                now = time.perf_counter()
                seconds[name] = now - clock[0]
                clock[0] = now

        game, traj = self.rollout_phase(base, state, game, root, it)
        lap("rollout", traj)
        traj, words = self.prepare(traj)
        lap("prepare", (traj, words))
        state, metrics = self.update_phase(base, state, traj, words, root, it, fault)
        lap("update", (state, metrics))
        record = {"rollout": rollout_metrics(traj), "update": metrics}
        return StepOutput(state, game, traj, record, seconds)


def make_iteration(setup: RunSetup, plan: Plan | None = None, *, state: Any = None,
                   ppo: PPOConfig | None = None, host_steps: bool = True) -> Iteration:
    """The iteration of a run: its rollout, preparation and update.

    Args:
        setup: the run's setup (placed by `plan` when there is one).
        plan: the device plan. With one, the rollout and the update are jitted with its
            shardings (needs `state`); without, the rollout is jitted plainly (host steps)
            or left to the caller's trace (`host_steps=False`).
        state: a `TrainState` of the run, whose placement gives the update's output
            shardings (with a `plan`).
        ppo: the update's configuration (default: the experiment's; benchmarks time
            variants).
        host_steps: False when the iteration is traced inside the caller's jit / vmap
            (seed_vmap): no padding trim, no word counts, no timings.

    Raises:
        ConfigError: `logprob_norm="word"` without host steps.
    """
    exp = setup.exp
    ppo = ppo or exp.ppo
    if plan is not None and state is None:
        raise ValueError("make_iteration with a plan needs the state (its shardings)")
    if not host_steps and ppo.logprob_norm == "word":
        raise ConfigError("config field 'ppo.logprob_norm': 'word' counts words on the host, "
                          "which a traced (seed-vmapped) iteration cannot")
    rollout = make_team_rollout(setup, setup.train, setup.rollout_config,
                                float(exp.sampling.temperature), plan=plan)
    options: dict[str, Any] = {}
    groups = None if setup.hetero is None else setup.hetero.groups
    if plan is not None:
        rollout = plan.jit_rollout(rollout, group_size=problem_group_size(exp),
                                   num_bases=1 if groups is None else groups.num_bases)
        options = plan.update_options(state)
    elif host_steps:
        rollout = rollout.compile()
    prefix = setup.layout.prefix if ppo.shared_prefix and groups is None else None
    update = make_update(setup.graphdef, ppo, exp.team.graph, groups=groups, prefix=prefix,
                         obs_capacity=setup.rollout_config.agent_obs_tokens, **options)
    return Iteration(setup=setup, plan=plan, rollout=rollout, update=update, ppo=ppo,
                     host_steps=host_steps)
