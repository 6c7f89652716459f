"""Several seeds of one config trained as one jitted, seed-vmapped program.

Where the whole rollout is JAX (the token tasks: no host reward, no tokenizer), a seed is
just a leading axis: the initial states of every seed are stacked, and one `jax.jit`
compiles `vmap(seed -> scan(iteration))`, so S seeds cost one compilation and run as one
batched program. The iteration is `loop.train`'s (`iteration.make_iteration`, traced:
without the host-side padding trim), with the same key schedule, so a vmapped seed
reproduces the corresponding `experiments/train.py --config.seed=S` run up to float
rounding (tested).

Non-finite updates: the update skips a non-finite step inside the program (as in
`loop.train`), but a program has no checkpoints to roll back to. A seed whose updates were
non-finite `train.rollback_after` iterations in a row, or whose state ends non-finite, is
therefore trained again alone by `loop.train` (checkpoints, rollbacks), and its summary says
so (`retrained_alone`). Fault injection (config section `faults`) exists only in
`loop.train`: configs with a fault do not vmap.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import numpy as np
from absl import logging

from marft_jax.envs.registry import get_task
from marft_jax.errors import ConfigError
from marft_jax.training import faults as fault_lib
from marft_jax.training.config import Experiment
from marft_jax.training.iteration import make_iteration
from marft_jax.training.loop import evaluate_team, initial_state, make_evaluators, train
from marft_jax.training.run_dir import MetricsWriter
from marft_jax.training.setup import RunSetup, build_setup


def can_vmap_seeds(exp: Experiment) -> bool:
    """True when the config's rollout is JAX-native (no host reward or tokenizer) and it
    injects no fault (`faults` runs only in `loop.train`)."""
    return (get_task(exp.task.kind).jax_native and exp.ppo.logprob_norm != "word"
            and fault_lib.fault_settings(exp.config)["kind"] == "none")


def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


def _check_same_but_seed(exps: list[Experiment]) -> None:
    first = exps[0].config.to_dict()
    first.pop("seed")
    for e in exps[1:]:
        other = e.config.to_dict()
        other.pop("seed")
        if other != first:
            raise ConfigError("seed-vmapped runs: the configs may differ only in 'seed'")
    if not can_vmap_seeds(exps[0]):
        raise ConfigError("config field 'task.kind': seed-vmapped training needs a JAX-native "
                          "rollout (task.kind='tokens', logprob_norm other than 'word') and "
                          "no 'faults'")


def _nonfinite_streak(records: list[dict[str, Any]]) -> int:
    """The longest run of consecutive iterations whose update skipped a non-finite step."""
    longest = streak = 0
    for record in records:
        update = record["update"]
        bad = (np.asarray(update["skipped_nonfinite"]).sum() > 0
               or int(np.asarray(update["critic_skipped_nonfinite"])) > 0)
        streak = streak + 1 if bad else 0
        longest = max(longest, streak)
    return longest


def _needs_retraining(exp: Experiment, records: list[dict[str, Any]], state) -> str | None:
    """Why a vmapped seed must be trained again alone (None: it need not)."""
    limit = exp.train.rollback_after
    streak = _nonfinite_streak(records)
    if limit and streak >= limit:
        return f"{streak} consecutive non-finite updates (train.rollback_after={limit})"
    if not fault_lib.state_is_finite(state):
        return "its adapters or critic ended non-finite"
    return None


def make_seed_program(setups: list[RunSetup]):
    """`program(base, state, game, root, start, length) -> (state, game, history)`: iterations
    `start .. start + length - 1` of every seed, jitted (once per `length`) and vmapped over a
    leading seed axis of `base, state, game, root`; `history` leaves are
    `[seeds, length, ...]`."""
    # Traced: the padding trim needs concrete widths, which differ between seeds and
    # iterations inside one program; every seed updates on the full-width trajectory.
    iteration = make_iteration(setups[0], host_steps=False)

    def one_seed(base, state, game, root, start, length):
        def body(carry, it):
            out = iteration(base, *carry, root, it)
            return (out.state, out.game), out.record

        iterations = start + jnp.arange(length)
        (state, game), history = jax.lax.scan(body, (state, game), iterations)
        return state, game, history

    vmapped = jax.vmap(one_seed, in_axes=(0, 0, 0, 0, None, None))
    return jax.jit(vmapped, static_argnums=(5,))


def _chunks(total: int, every: int) -> list[tuple[int, int]]:
    """`(start, length)` pieces of `total` iterations that end at every multiple of `every`."""
    ends = list(range(every, total, every)) if every else []
    starts = [0] + ends
    return [(a, b - a) for a, b in zip(starts, ends + [total])]


def train_seeds(exps: list[Experiment], run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Trains `exps` (one config, several seeds) as one vmapped program.

    Writes into each run directory what `loop.train` writes there (metrics.jsonl with the
    evaluation before, every `train.eval_every` iterations and after; summary.json), without
    checkpoints. The program runs in pieces of `train.eval_every` iterations (one
    compilation per piece length), the evaluations between them.

    Returns:
        One summary per seed: `eval_before`, `eval_after`, `last_score`, `iterations`,
        `wall_s` (the training program's wall time, shared by all seeds); a seed trained
        again alone (see the module docstring) has `loop.train`'s summary with
        `retrained_alone` (the reason) added.
    """
    _check_same_but_seed(exps)
    setups = [build_setup(e) for e in exps]
    evaluators = make_evaluators(setups[0])  # compiled once: the seeds differ in data only
    states, games = zip(*(initial_state(s) for s in setups))
    evaluate = lambda i, lora, step, tag: evaluate_team(evaluators, setups[i], lora, step,
                                                        None, tag)
    befores = [evaluate(i, st.lora, 0, "before") if setups[i].exp.train.eval_before or
               not setups[i].exp.train.iterations else None for i, st in enumerate(states)]
    total = exps[0].train.iterations
    state, game = _stack(list(states)), _stack(list(games))
    records: list[list[dict[str, Any]]] = [[] for _ in exps]
    wall = 0.0
    if total:
        program = make_seed_program(setups)
        roots = jnp.stack([jax.random.key(e.seed) for e in exps])
        base = _stack([s.base for s in setups])
        for start, length in _chunks(total, exps[0].train.eval_every):
            t0 = time.perf_counter()
            state, game, history = program(base, state, game, roots, start, length)
            history = jax.device_get(history)
            wall += time.perf_counter() - t0
            for i in range(len(exps)):
                seed_history = _unstack(history, i)
                records[i] += [_unstack(seed_history, j) for j in range(length)]
                if start + length < total:
                    records[i][-1]["eval"] = evaluate(i, _unstack(state.lora, i),
                                                      start + length, f"step{start + length}")
    summaries = []
    for i, (setup, run_dir) in enumerate(zip(setups, run_dirs)):
        why = _needs_retraining(exps[i], records[i], _unstack(state, i)) if total else None
        if why is not None:
            logging.warning("seed %d: %s in the vmapped program; training it again alone "
                            "(loop.train: checkpoints and rollbacks) in %s", exps[i].seed,
                            why, run_dir)
            summary = train(exps[i], run_dir)
            summary["retrained_alone"] = why
            (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2,
                                                                   default=float))
            summaries.append(summary)
            continue
        after = befores[i] if total == 0 else evaluate(i, _unstack(state.lora, i), total,
                                                       "after")
        writer = MetricsWriter(run_dir)
        if befores[i] is not None:
            writer.write(0, {"eval": befores[i]})
        for it, record in enumerate(records[i]):
            writer.write(it + 1, record)
        if after is not None and total:
            writer.write(total, {"eval": after})
        writer.close()
        summary = {"eval_before": befores[i], "eval_after": after, "iterations": total,
                   "last_score": float(records[i][-1]["rollout"]["score"]) if total else None,
                   "wall_s": wall}
        (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2,
                                                               default=float))
        summaries.append(summary)
    return summaries
