"""The training loop: iteration (rollout, prepare, update) -> metrics -> checkpoint.

All randomness derives from the root key by `fold_in(iteration, phase)`, and the game state
(in-progress episodes and the data cursor) is checkpointed with the adapters, critic and
optimizer states, so a resumed run continues bit for bit on the same machine.

Devices: the config's `mesh` section gives a `parallel.Plan`; the same rollout and update
run on one device or many (weights, adapters and optimiser states placed by the sharding
rules, environments split over data × fsdp). In a multi-process run every process executes
this loop on its own part of the mesh; checkpoints are written by all processes, metrics,
logs and files by process 0 only.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from marft_jax import parallel
from marft_jax.algorithms.state import create_train_state
from marft_jax.errors import ConfigError
from marft_jax.training import faults as fault_lib
from marft_jax.training.checkpoint import RunCheckpointer, base_fingerprint
from marft_jax.training.config import Experiment
from marft_jax.training.evaluation import Evaluator
from marft_jax.training.iteration import make_iteration, problem_group_size
from marft_jax.training.run_dir import MetricsWriter, json_safe
from marft_jax.training.setup import Phase, RunSetup, build_setup, sampling_key, start_game


def run_key(seed: int, rollbacks: int = 0) -> jax.Array:
    """The root key of the iterations: the seed's, folded once more after each rollback."""
    root = jax.random.key(seed)
    return root if rollbacks == 0 else sampling_key(root, Phase.ROLLBACK, rollbacks)


def _meta(setup: RunSetup, step: int, fingerprint: str | None = None) -> dict[str, Any]:
    exp = setup.exp
    if fingerprint is None:
        fingerprint = base_fingerprint(setup.model_config.to_dict(), setup.base)
    return {"step": step, "base_fingerprint": fingerprint,
            "roles": list(exp.team.roles), "adapters": list(exp.team.adapter_names),
            "lora": {"rank": exp.lora.rank, "alpha": exp.lora.alpha,
                     "targets": list(exp.lora.targets),
                     "num_adapters": exp.lora.num_adapters}}


def eval_batch(exp: Experiment) -> int:
    """Problems per evaluation call (`train.eval_batch`, 0 = the rollout's env count)."""
    return exp.train.eval_batch or exp.rollout.num_envs


def initial_state(setup: RunSetup, plan: parallel.Plan | None = None):
    """`(TrainState, GameState)` of a fresh run: critic and problem order from the seed.

    With a `plan`, the state is placed by its sharding rules and the envs are split.
    """
    exp = setup.exp
    root = jax.random.key(exp.seed)
    state = create_train_state(exp.ppo, setup.lora, sampling_key(root, Phase.INIT_CRITIC),
                               setup.model_config.hidden_size, exp.team.num_agents)
    game = start_game(setup, setup.train, exp.rollout.num_envs,
                      sampling_key(root, Phase.INIT_GAME), group_size=problem_group_size(exp))
    if plan is not None:
        state, game = plan.place_params(state), plan.place_game(game)
    return state, game


def restore_state(setup: RunSetup, checkpointer: RunCheckpointer, step: int,
                  plan: parallel.Plan | None = None, fingerprint: str | None = None):
    """`(TrainState, GameState, meta)` saved at `step`; refuses another base / team / LoRA.

    With a `plan`, the arrays are restored straight into its shardings (any mesh).
    """
    state, game = initial_state(setup, plan)
    restored, meta = checkpointer.restore(step, {"train": state, "game": game},
                                          _meta(setup, step, fingerprint))
    return restored["train"], restored["game"], meta


def load_trained_adapters(setup: RunSetup, run_dir: str | Path, step: int | None = None):
    """`(lora, step)`: the adapters of a run's checkpoint (default: the latest), for
    evaluation or export.

    Only the adapters are read (an orbax partial restore), not the rest of the train state
    (critic, optimizer states, counters) nor the game state: the game's shapes depend on the
    task, so a run's adapters can be evaluated on another task (transfer), and a checkpoint
    whose train state had another layout (an earlier version's counters) still loads. The
    base model, roles and LoRA layout must still match the run's.

    Raises:
        ConfigError: no checkpoint in `run_dir`, or an incompatible one.
    """
    where = Path(run_dir) / "checkpoints"
    if not where.is_dir():  # checked first: opening a checkpointer would create it
        raise ConfigError(f"{where}: no checkpoints directory (is --run_dir a training run?)")
    checkpointer = RunCheckpointer(run_dir, keep=setup.exp.train.keep_checkpoints,
                                   async_save=False)
    try:
        saved = checkpointer.steps()
        if not saved:
            raise ConfigError(f"{where}: no checkpoint in this run")
        if step is not None and step not in saved:
            raise ConfigError(f"{where}: no checkpoint at step {step} (saved: {saved})")
        template = {"train": {"lora": setup.lora}}
        read = lambda s: checkpointer.restore(s, template, _meta(setup, s),
                                              partial=True)[0]["train"]["lora"]
        # An explicit step is read or refused; the latest falls back past broken steps.
        lora, step, failed = checkpointer.restore_newest(read, None if step is None
                                                         else [step])
        for bad, reason in failed:
            logging.warning("checkpoint step %d of %s does not restore (%s); using step %d",
                            bad, run_dir, reason, step)
    finally:
        checkpointer.close()
    return lora, step


def prepare_setup(exp: Experiment) -> RunSetup:
    """`build_setup` and the device checks: everything of a run that can fail on bad
    input (a model that does not load, a team the vocabulary cannot hold, a mesh that
    does not fit), done before the run directory is written."""
    plan = parallel.plan_for(exp.mesh)
    setup = build_setup(exp)
    num_envs = exp.rollout.num_envs
    plan.check_envs(num_envs, "rollout.num_envs")
    plan.check_envs(eval_batch(exp), "train.eval_batch")
    plan.check_update(setup.exp.ppo, num_envs)  # grad_accum_steps resolved
    return setup


def resume_state(setup: RunSetup, checkpointer: RunCheckpointer, run_dir: Path,
                 plan: parallel.Plan, fingerprint: str):
    """`(TrainState, GameState, meta, step)` of the newest checkpoint that restores.

    Steps that do not restore (a truncated data file, a missing metadata file) are named
    in one warning line each and moved to `<run>/corrupt_checkpoints/` (never deleted),
    and the run continues from the newest good step.
    """
    def read(step):
        return restore_state(setup, checkpointer, step, plan, fingerprint)

    (state, game, meta), step, failed = checkpointer.restore_newest(read)
    for bad, reason in failed:
        if parallel.is_main_process():
            moved = checkpointer.set_aside(bad)
            logging.warning("checkpoint step %d of %s does not restore (%s); moved it to %s "
                            "and resumed from step %d", bad, run_dir, reason, moved, step)
    if failed:
        parallel.sync("corrupt_checkpoints")
        checkpointer.manager.reload()
    return state, game, meta, step


def place_setup(setup: RunSetup, plan: parallel.Plan) -> RunSetup:
    """The setup with its base weights and initial adapters placed by the sharding rules."""
    return dataclasses.replace(setup, base=plan.place_params(setup.base),
                               lora=plan.place_params(setup.lora))


def make_evaluators(setup: RunSetup, plan: parallel.Plan | None = None
                    ) -> dict[str, Evaluator]:
    """The run's evaluations of the held-out split: "" (greedy or sampled, as
    `train.eval_greedy` says) and, with `train.eval_sampled`, "sampled" (at the training
    temperature, `train.eval_samples` samples a problem). Empty without a held-out split."""
    exp = setup.exp
    if setup.heldout is None or exp.train.eval_problems == 0:
        return {}
    make = lambda greedy: Evaluator(setup, setup.heldout, batch=eval_batch(exp), greedy=greedy,
                                    samples=exp.train.eval_samples, plan=plan)
    evaluators = {"": make(exp.train.eval_greedy)}
    if exp.train.eval_sampled and exp.train.eval_greedy:
        evaluators["sampled"] = make(False)
    return evaluators


def evaluate_team(evaluators: dict[str, Evaluator], setup: RunSetup, lora, step: int,
                  run_dir: Path | None, tag: str) -> dict[str, Any] | None:
    """Runs `make_evaluators`' evaluations of `setup`'s team (its base, seed and limits) with
    `lora`: the main one's metrics, with the sampled one's nested under "sampled"; responses
    go to `run_dir/responses_<tag>[_sampled].jsonl`. The evaluators may be another seed's."""
    if not evaluators:
        return None
    key = sampling_key(jax.random.key(setup.exp.seed), Phase.EVAL)
    main = parallel.is_main_process()
    metrics: dict[str, Any] = {}
    for name, evaluator in evaluators.items():
        suffix = f"_{name}" if name else ""
        path = run_dir / f"responses_{tag}{suffix}.jsonl" if (main and run_dir) else None
        out = evaluator.run(lora, key, limit=setup.exp.train.eval_problems,
                            responses_path=path, progress=main, base=setup.base)
        if main:
            logging.info("eval %s%s (step %d): %s", tag, suffix, step,
                         ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in out.items()))
        if name:
            metrics[name] = out
        else:
            metrics.update(out)
    return metrics


def train(exp: Experiment, run_dir: str | Path, *, resume: bool = False,
          stop_after: int | None = None, setup: RunSetup | None = None) -> dict[str, Any]:
    """Runs (or resumes) a training run in `run_dir`.

    Args:
        exp: the finalized experiment.
        run_dir: the run directory (config.json already written by the caller).
        resume: continue from the latest checkpoint in `run_dir`.
        stop_after: stop after this many iterations in total (tests: a simulated kill).
        setup: `prepare_setup(exp)`, when the caller built it already.

    Returns:
        A summary: eval metrics before and after, last rollout score, iterations done.
    """
    run_dir = Path(run_dir)
    plan = parallel.plan_for(exp.mesh)
    main = parallel.is_main_process()
    setup = setup or prepare_setup(exp)
    team = exp.team
    fingerprint = base_fingerprint(setup.model_config.to_dict(), setup.base)  # before placing
    setup = place_setup(setup, plan)
    state, game = initial_state(setup, plan)
    iteration = make_iteration(setup, plan, state=state)
    faults = exp.faults

    checkpointer = RunCheckpointer(run_dir, exp.train.keep_checkpoints)
    start = 0
    summary: dict[str, Any] = {}
    if resume and checkpointer.latest_step() is not None:
        state, game, meta, start = resume_state(setup, checkpointer, run_dir, plan,
                                                fingerprint)
        summary = meta.get("summary", {})
        if start > exp.train.iterations:
            raise ConfigError(f"config field 'train.iterations': {exp.train.iterations} is "
                              f"fewer than the {start} iterations {run_dir} has done")
        if main:
            logging.info("resumed %s at iteration %d", run_dir, start)
    # Resumed: keep the rows of the steps done (all of them redone without a checkpoint).
    resume_step = (start + 1 if start else 0) if resume else None
    writer = MetricsWriter(run_dir, resume_step=resume_step) if main else None
    write = writer.write if main else (lambda *args, **kwargs: None)
    rollbacks = int(summary.get("rollbacks", 0))
    root = run_key(exp.seed, rollbacks)

    evaluators = make_evaluators(setup, plan)
    if start == 0 and evaluators and exp.train.eval_before:
        summary["eval_before"] = evaluate_team(evaluators, setup, state.lora, 0, run_dir,
                                               "before")
        write(0, {"eval": summary["eval_before"]})

    total = exp.train.iterations
    end = total if stop_after is None else min(total, stop_after)
    times: list[float] = []
    bad_streak = 0  # consecutive iterations with a non-finite update or state
    it = start
    while it < end:
        t0 = time.perf_counter()
        step = it + 1
        fault_lib.kill_point("compile", step)
        # The critic is poisoned before the rollout, which does not read it.
        state = fault_lib.poison_critic(state, faults, step, rollbacks)
        fault = fault_lib.update_fault(faults, team.adapter_index, step, rollbacks)
        out = iteration(setup.base, state, game, root, it, fault=fault, timed=True)
        state, game = out.state, out.game
        record = jax.tree_util.tree_map(plan.fetch, out.record)
        games = game if isinstance(game, tuple) else (game,)  # one per base
        if any(bool(np.any(plan.fetch(g.overflow))) for g in games):
            raise RuntimeError("a game state outgrew its buffer (a bug in the size derivation)")
        fault_lib.kill_point("update", step)
        times.append(time.perf_counter() - t0)
        finite = _check_finite(record["update"], state, step, team)
        bad_streak = 0 if finite else bad_streak + 1
        if exp.train.eval_every and step % exp.train.eval_every == 0 and step < total:
            record["eval"] = evaluate_team(evaluators, setup, state.lora, step, run_dir,
                                           f"step{step}")
        write(step, record)
        summary["last_score"] = float(record["rollout"]["score"])
        if main and (step % exp.train.log_every == 0 or step == end):
            sec = float(np.median(times[-5:]))
            logging.info("iteration %d/%d  %.1fs/it (%s)  ETA %.0fs  score %.3f  "
                         "reward %.3f  policy_loss %.4f  value_loss %.4f", step, total, sec,
                         ", ".join(f"{k} {v:.1f}s" for k, v in out.seconds.items()),
                         sec * (total - step), record["rollout"]["score"],
                         record["rollout"]["reward"],
                         float(np.mean(record["update"].get("policy_loss", np.nan))),
                         float(np.mean(record["update"].get("value_loss", np.nan))))
        limit = exp.train.rollback_after
        if limit and bad_streak >= limit:
            rollbacks += 1
            if rollbacks > exp.train.max_rollbacks:
                raise RuntimeError(f"{bad_streak} consecutive non-finite updates after "
                                   f"{rollbacks - 1} rollbacks; giving up at iteration {step}")
            state, game, it = _roll_back(setup, checkpointer, plan, fingerprint, writer, step)
            summary["rollbacks"] = rollbacks
            root, bad_streak = run_key(exp.seed, rollbacks), 0
            continue
        # A non-finite update leaves no checkpoint: the last good one is what a rollback
        # restores (and keep_checkpoints must not rotate it out).
        if bad_streak == 0 and ((exp.train.checkpoint_every
                                 and step % exp.train.checkpoint_every == 0) or step == end):
            meta = _meta(setup, step, fingerprint) | {"summary": json_safe(summary)}
            checkpointer.save(step, {"train": state, "game": game}, meta)  # every process
            fault_lib.kill_point("checkpoint", step)
        it += 1
    checkpointer.close()
    if total == 0 and evaluators:  # evaluation only: the untrained team
        summary["eval_after"] = summary.get("eval_before") or evaluate_team(
            evaluators, setup, state.lora, 0, run_dir, "before")
    elif end == total and evaluators:
        summary["eval_after"] = evaluate_team(evaluators, setup, state.lora, total, run_dir,
                                              "after")
        write(total, {"eval": summary["eval_after"]})
        fault_lib.kill_point("final_eval")
    summary["iterations"] = end
    if main:
        writer.close()
        (run_dir / "summary.json").write_text(json.dumps(json_safe(summary), indent=2,
                                                         allow_nan=False))
    return summary


def _check_finite(update_metrics: dict[str, Any], state, step: int, team) -> bool:
    """Whether an iteration's update was finite; a warning line names what was skipped."""
    skipped = np.asarray(update_metrics["skipped_nonfinite"])
    critic_skipped = int(np.asarray(update_metrics["critic_skipped_nonfinite"]))
    state_ok = fault_lib.state_is_finite(state)
    if skipped.sum() == 0 and critic_skipped == 0 and state_ok:
        return True
    if parallel.is_main_process():
        adapters = [f"{team.adapter_names[i]} ×{int(n)}" for i, n in enumerate(skipped) if n]
        logging.warning("iteration %d: non-finite update: steps skipped for adapters [%s], "
                        "critic steps skipped: %d%s", step, ", ".join(adapters),
                        critic_skipped, "" if state_ok else "; the state is non-finite")
    return False


def _roll_back(setup: RunSetup, checkpointer: RunCheckpointer, plan: parallel.Plan,
               fingerprint: str, writer: MetricsWriter | None, step: int):
    """`(state, game, iteration)` of the last good checkpoint (the initial state without
    one); metrics rows after it are dropped, as a resume from it would."""
    checkpointer.wait()
    good = checkpointer.latest_step()
    if good is None:
        state, game = initial_state(setup, plan)
        good = 0
    else:
        state, game, _ = restore_state(setup, checkpointer, good, plan, fingerprint)
    if writer is not None:
        writer.rewind(good + 1)
    if parallel.is_main_process():
        logging.warning("iteration %d: %d consecutive non-finite updates; rolled back to "
                        "the checkpoint of step %d with a fresh key", step,
                        setup.exp.train.rollback_after, good)
    return state, game, good
