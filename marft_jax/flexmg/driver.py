"""A rollout as three pure parts, and the two ways to run them.

A round of a Flex-MG is `act` (every wave's agents observe and generate), the grading of the
answers, and `settle` (rewards placed, the game advanced); `finish` stacks the rounds into
a `Trajectory` and reads the bootstrap observation. How the round is graded decides how
the parts run (`Rollout.compile`):

- a JAX reward (token tasks): the whole rollout is one pure function (`Rollout.__call__`:
  `lax.scan` over rounds), jittable, vmappable over seeds, one program;
- a `HostReward` (text tasks: detokenise, extract, grade in Python): `act`, `settle` and
  `finish` are jitted on their own and the rounds loop on the host, grading between `act`
  and `settle`. None of the programs holds a host callback, so JAX's persistent
  compilation cache keeps them across processes (a program with a `jax.pure_callback`
  is never written to it), and grading runs where the rows are: on each process's own
  environments (`grade_on_host`).

Both ways draw the same round keys (`jax.random.split(key, num_rounds)`), so a JAX reward
wrapped as a `HostReward` gives the same trajectory either way (tested).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class HostReward:
    """A reward graded in NumPy on the host: `grade(problem_ids [E], actions [A, E, K],
    lengths [A, E]) -> [A, E]` float32. Calling it grades host arrays."""

    grade: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    num_agents: int

    def __call__(self, problem_ids, actions, lengths) -> np.ndarray:
        return np.asarray(self.grade(np.asarray(problem_ids), np.asarray(actions),
                                     np.asarray(lengths)), np.float32)


def grade_on_host(reward: HostReward, problem_ids: Array, actions: Array,
                  lengths: Array) -> Array | np.ndarray:
    """Grades a round's answers where they are: whole when this process holds every env,
    otherwise each of its own env shards, assembled into a global `[A, E]` array split
    like `problem_ids` (a multi-host run: no process sees another's environments).

    Args:
        problem_ids: `[E]` problem of each env (env-sharded or not).
        actions: `[A, E, K]` responses; lengths: `[A, E]`.
    """
    if all(getattr(x, "is_fully_addressable", True) for x in (problem_ids, actions, lengths)):
        return reward(problem_ids, actions, lengths)
    return grade_shards(reward, problem_ids, actions, lengths)


def grade_shards(reward: HostReward, problem_ids: Array, actions: Array,
                 lengths: Array) -> Array:
    """`grade_on_host` shard by shard: every distinct env slice of `problem_ids` this process
    holds is graded once, with the same envs' rows of `actions` and `lengths` (a device
    holding those envs' ids holds their rows, split the same way or whole), and put on
    each of its devices; the result is split like `problem_ids`."""
    num_envs = problem_ids.shape[0]
    by_device = lambda x: {s.device: s for s in x.addressable_shards}
    acts, lens = by_device(actions), by_device(lengths)

    def rows(shard, start: int, stop: int) -> np.ndarray:  # envs start:stop of an [A, E..]
        first = shard.index[1].start or 0
        return np.asarray(shard.data)[:, start - first:stop - first]

    graded: dict[tuple[int, int], np.ndarray] = {}
    pieces = []
    for shard in problem_ids.addressable_shards:
        start, stop, _ = shard.index[0].indices(num_envs)
        if (start, stop) not in graded:
            graded[start, stop] = reward(shard.data, rows(acts[shard.device], start, stop),
                                         rows(lens[shard.device], start, stop))
        pieces.append(jax.device_put(graded[start, stop], shard.device))
    spec = jax.sharding.PartitionSpec(None, *problem_ids.sharding.spec)
    sharding = jax.sharding.NamedSharding(problem_ids.sharding.mesh, spec)
    return jax.make_array_from_single_device_arrays((reward.num_agents, num_envs), sharding,
                                                    pieces)


@dataclasses.dataclass(frozen=True)
class Rollout:
    """`rollout(params, game, key) -> (game, Trajectory)` built from its round parts.

    Attributes:
        act: `(params, game, key) -> (play, graded)`: one round's waves (observations,
            generation); `graded` is what the reward reads, `(problem_ids [E],
            actions [A, E, K], lengths [A, E])`.
        settle: `(game, play, correct [A, E]) -> (game, record)`: rewards and transition.
        finish: `(game, records) -> (game, Trajectory)`, `records` a tuple of R round
            records or the records stacked by `lax.scan` (`stacked=True`).
        reward_fn: a JAX reward `(problem_ids, actions, lengths) -> correct` or a
            `HostReward`.
        num_rounds: R.
    """

    act: Callable[..., Any]
    settle: Callable[..., Any]
    finish: Callable[..., Any]
    reward_fn: Callable[..., Any]
    num_rounds: int

    @property
    def host_graded(self) -> bool:
        return isinstance(self.reward_fn, HostReward)

    def __call__(self, params, game, key: Array):
        """The whole rollout as one pure function (JAX rewards only)."""
        if self.host_graded:
            raise TypeError("a host-graded rollout runs through Rollout.compile(), not "
                            "under a trace")

        def one_round(g, round_key):
            play, graded = self.act(params, g, round_key)
            return self.settle(g, play, self.reward_fn(*graded))

        game, records = jax.lax.scan(one_round, game,
                                     jax.random.split(key, self.num_rounds))
        return self.finish(game, records, stacked=True)

    def compile(self, out_shardings: Any = None) -> Callable:
        """The rollout ready to call: `jax.jit` of the whole for a JAX reward; for a host
        reward, `act` / `settle` / `finish` jitted and the rounds stepped on the host.

        Args:
            out_shardings: of `(game, Trajectory)` (`parallel.Plan.jit_rollout`), or None.
        """
        if not self.host_graded:
            return jax.jit(self, out_shardings=out_shardings)
        act, settle = jax.jit(self.act), jax.jit(self.settle)
        finish = jax.jit(self.finish, static_argnames="stacked", out_shardings=out_shardings)

        def stepped(params, game, key: Array):
            records = []
            for round_key in jax.random.split(key, self.num_rounds):
                play, graded = act(params, game, round_key)
                correct = grade_on_host(self.reward_fn, *graded)
                game, record = settle(game, play, correct)
                records.append(record)
            return finish(game, tuple(records))

        return stepped


def stack_records(records, stacked: bool):
    """Round records as one pytree with a leading round axis."""
    if stacked:
        return records
    return jax.tree.map(lambda *x: jnp.stack(x), *records)
