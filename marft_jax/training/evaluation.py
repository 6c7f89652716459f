"""Evaluation of the team (base + adapters) on a held-out split.

Every problem is played once per sample for one round (as the reference evaluator does),
greedy or sampled; accuracy is the mean task score, reported overall and per answering
agent, with pass@k over `samples` samples per problem. Math tasks are also scored both ways
on the same responses: `accuracy_strict` (a `\\boxed{}` answer only) and `accuracy_lenient`
(box, answer phrase or last number: the training reward), so a gain from learning the
answer format shows as such.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from marft_jax.envs.math.grader import SCORINGS, grade_answer
from marft_jax.flexmg.rollout import RolloutConfig
from marft_jax.envs.registry import TaskSplit
from marft_jax.training.setup import RunSetup, make_team_rollout, start_game


def pass_at_k(n: int, c: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k (Chen et al. 2021) per problem: n samples, c of them correct."""
    c = np.asarray(c)
    if n - k < 0:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    out = np.ones(c.shape, np.float64)
    for i, ci in np.ndenumerate(c):
        if n - ci >= k:
            out[i] = 1.0 - math.comb(int(n - ci), k) / math.comb(n, k)
    return out


def grade_records(records: list[dict[str, Any]], roles: list[str], scoring: str) -> np.ndarray:
    """`[records, roles]` 0/1: each role's response in each record graded against the
    record's "answer" with one of `grader.SCORINGS`."""
    return np.array([[float(grade_answer(r[role], r["answer"], scoring=scoring))
                      for role in roles] for r in records], np.float64).reshape(-1, len(roles))


@dataclasses.dataclass
class Evaluator:
    """A compiled evaluation of one split with a fixed batch size."""

    setup: RunSetup
    split: TaskSplit
    batch: int
    greedy: bool = True
    samples: int = 1
    plan: Any = None  # parallel.Plan to run on (envs split, results gathered); None: as is

    def __post_init__(self):
        self.split = self.split.for_evaluation()  # pass/fail, not partial credit
        temperature = 0.0 if self.greedy else float(self.setup.exp.sampling.temperature)
        config = dataclasses.replace(self.setup.rollout_config, num_rounds=1, horizon=1,
                                     reward_placement="answering")
        rollout = make_team_rollout(self.setup, self.split, config, temperature, plan=self.plan)
        bases = 1 if self.setup.hetero is None else self.setup.hetero.groups.num_bases
        self._rollout = rollout.compile() if self.plan is None else \
            self.plan.jit_rollout(rollout, num_bases=bases)
        self._config: RolloutConfig = config
        if self.greedy:
            self.samples = 1

    def run(self, lora, key: jax.Array, limit: int | None = None,
            responses_path: str | Path | None = None,
            progress: bool = False, base=None) -> dict[str, Any]:
        """Plays every problem (or the first `limit`) `samples` times.

        Args:
            lora: the adapters to evaluate.
            key: sampling key (sample s, call c use `fold_in(fold_in(key, s), c)`).
            limit: evaluate only the first `limit` problems.
            responses_path: write every response (JSON lines) here (math and code tasks).
            progress: log problems done, elapsed time and an ETA after every call.
            base: the base weights to run (default: the setup's); one compiled evaluation
                then serves runs whose configs differ only in the seed.

        Returns:
            metrics: `accuracy`, `accuracy/<role>` per answering agent, `pass@k` for each
            k ≤ samples in powers of two, `problems`; math tasks add `accuracy_<scoring>`
            for each of `grader.SCORINGS` (mean over samples and answering agents). In an
            orchestrated team an agent the orchestrator did not call made no decision:
            `accuracy/<role>` is then over the plays it was called in (0 if never), and
            `called/<role>` says in what fraction of plays it was called.
        """
        setup, team = self.setup, self.setup.exp.team
        base = setup.base if base is None else base
        p = self.split.num_problems if limit is None else min(limit, self.split.num_problems)
        chunks = math.ceil(p / self.batch)
        answering = [i for i, a in enumerate(team.answer_mask) if a]
        scores = np.zeros((self.samples, p), np.float64)
        per_agent = np.zeros((self.samples, len(answering), p), np.float64)
        called = np.ones((self.samples, len(answering), p), bool)  # the agent made a decision
        scored = {name: np.zeros((self.samples, len(answering), p)) for name in SCORINGS}
        texts: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        for s in range(self.samples):
            for c in range(chunks):
                order = (jnp.arange(self.split.num_problems) + c * self.batch) % \
                    self.split.num_problems
                game = start_game(setup, self.split, self.batch, None, order=order)
                k = jax.random.fold_in(jax.random.fold_in(key, s), c)
                if self.plan is None:
                    _, traj = self._rollout((base, lora), game, k)
                else:
                    _, traj = self._rollout((base, lora), self.plan.place_game(game), k)
                    traj = self.plan.fetch_tree(traj)
                ids = np.asarray((game[0] if isinstance(game, tuple) else game).problem_id)
                real = np.arange(self.batch) + c * self.batch < p
                rows = ids[real]
                scores[s, rows] = np.asarray(traj.scores[0])[real]
                rewards = np.asarray(traj.rewards[0])  # [A, E]: own correctness
                acted = np.asarray(traj.action_mask[0]).any(axis=-1)  # [A, E]
                for j, i in enumerate(answering):
                    per_agent[s, j, rows] = rewards[i][real]
                    if team.orchestrator is not None:
                        called[s, j, rows] = acted[i][real]
                if self.split.math is not None or self.split.code is not None:
                    records = self._responses(traj, ids, real, s)
                    if self.split.math is not None:
                        for name, grid in scored.items():
                            grid[s][:, rows] = grade_records(
                                records, [team.roles[i] for i in answering], name).T
                    if responses_path is not None:
                        texts.extend(records)
                if progress:
                    done = s * chunks + c + 1
                    elapsed = time.perf_counter() - t0
                    eta = elapsed / done * (self.samples * chunks - done)
                    logging.info("eval: %d/%d problems%s, %.0f s, ETA %.0f s",
                                 min((c + 1) * self.batch, p), p,
                                 f" (sample {s + 1}/{self.samples})" if self.samples > 1 else "",
                                 elapsed, eta)
        metrics: dict[str, Any] = {"accuracy": float(scores.mean()), "problems": p}
        for j, i in enumerate(answering):
            plays = called[:, j]  # [samples, p]
            metrics[f"accuracy/{team.roles[i]}"] = (
                float(per_agent[:, j][plays].mean()) if plays.any() else 0.0)
            if team.orchestrator is not None:
                metrics[f"called/{team.roles[i]}"] = float(plays.mean())
        if self.split.math is not None and answering:
            for name, grid in scored.items():
                metrics[f"accuracy_{name}"] = float(grid.mean())
        correct = (scores > 0).sum(axis=0)
        k = 1
        while k <= self.samples:
            metrics[f"pass@{k}"] = float(pass_at_k(self.samples, correct, k).mean())
            k *= 2
        if responses_path is not None and texts:
            Path(responses_path).write_text("".join(json.dumps(t) + "\n" for t in texts))
        return metrics

    def _responses(self, traj, ids, real, sample) -> list[dict[str, Any]]:
        """One record per real env: the problem, every agent's response, the score and each
        answering agent's correctness (math: the graded answer; code: all tests pass)."""
        team, hetero = self.setup.exp.team, self.setup.hetero
        tokenizer_of = (lambda i: self.setup.tokenizer) if hetero is None else hetero.tokenizer_of
        actions = np.asarray(traj.action_tokens[0])
        mask = np.asarray(traj.action_mask[0])
        rewards = np.asarray(traj.rewards[0])
        out = []
        for e in np.nonzero(real)[0]:
            record = {**self._problem_fields(int(ids[e])), "sample": sample,
                      "score": float(np.asarray(traj.scores[0, e]))}
            for i, role in enumerate(team.roles):
                record[role] = tokenizer_of(i).decode(actions[i, e][mask[i, e]])
                if team.answer_mask[i]:
                    record[f"correct/{role}"] = bool(rewards[i, e] > 0)
            out.append(record)
        return out

    def _problem_fields(self, problem_id: int) -> dict[str, Any]:
        """What a responses record says about its problem."""
        if self.split.math is not None:
            problem = self.split.math.problems[problem_id]
            return {"id": problem.id, "problem": problem.problem, "answer": problem.answer}
        problem = self.split.code.problems[problem_id]
        return {"id": problem.id, "problem": problem.prompt, "entry_point": problem.entry_point}
