"""The code task as a Flex-MG environment: a problem table in tokens and a sandboxed grader.

The rollout draws problems from the pre-tokenised table (each row is a problem's prompt: a
signature and docstring); after each round the answering agents' responses are
detokenised, their code extracted (`extract.extract_code`) and run against the problem's
unit tests in sandboxed child processes, a batch at a time (`sandbox.grade_batch`), on the
host (a `flexmg.driver.HostReward`).

The reward is either the fraction of tests passed ("fraction", the training signal: partial
credit) or 1.0 only when every test passes ("pass", the pass/fail score that held-out
accuracy and pass@k are computed from).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from marft_jax.envs.code.datasets import CodeProblem
from marft_jax.envs.code.extract import extract_code
from marft_jax.envs.code.sandbox import Job, SandboxLimits, SandboxResult, grade_batch
from marft_jax.envs.host_graded import HostGraded, TextCodec, answer_texts, token_table
from marft_jax.errors import ConfigError
from marft_jax.flexmg.game import ProblemTable

REWARDS = ("fraction", "pass")


def candidate_program(response: str, problem: CodeProblem) -> str:
    """The program to test: the response's code, with the prompt's imports in front; when
    the code does not define the entry point it is taken as a completion of the prompt."""
    code = extract_code(response)
    if not code.strip():
        return ""
    if f"def {problem.entry_point}" not in code:
        return problem.prompt + code
    imports = [line for line in problem.prompt.splitlines()
               if line.startswith(("import ", "from "))]
    return "\n".join(imports + [code]) + "\n"


@dataclasses.dataclass(frozen=True)
class CodeTask(HostGraded):
    """Problems, their token table and the sandboxed grader.

    Attributes:
        problems: the problems, indexed like the table's rows.
        table: `ProblemTable` with `[P, Lp]` tokens.
        limits: the sandbox's limits per candidate.
        workers: candidates graded at once.
        reward: "fraction" (of tests passed) or "pass" (1.0 iff all pass).
    """

    problems: tuple[CodeProblem, ...]
    table: ProblemTable
    limits: SandboxLimits = SandboxLimits()
    workers: int = 2
    reward: str = "fraction"

    def run(self, responses: Sequence[str], problem_ids: Sequence[int]) -> list[SandboxResult]:
        """Grades `responses[i]` against problem `problem_ids[i]`, all in one batch."""
        jobs = []
        for text, pid in zip(responses, problem_ids):
            problem = self.problems[int(pid)]
            jobs.append(Job(candidate_program(text, problem), problem.suite,
                            problem.entry_point))
        return grade_batch(jobs, self.limits, self.workers)

    def grade(self, tokenizer: TextCodec, answer_mask: Sequence[bool], problem_ids: np.ndarray,
              actions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """`HostGraded.grade`: the reward of each answering agent's program."""
        out = np.zeros(lengths.shape, np.float32)
        pairs = answer_texts(tokenizer, answer_mask, actions, lengths)
        cells = [cell for cell, _ in pairs]
        results = self.run([text for _, text in pairs], [problem_ids[e] for _, e in cells])
        for (i, e), result in zip(cells, results):
            out[i, e] = result.fraction if self.reward == "fraction" else float(result.ok)
        return out


def build_code_task(problems: Sequence[CodeProblem], tokenizer: TextCodec,
                    limits: SandboxLimits = SandboxLimits(), workers: int = 2,
                    reward: str = "fraction") -> CodeTask:
    """Tokenises the problems' prompts into a table.

    Raises:
        ConfigError: no problems, or an unknown `reward`.
    """
    if not problems:
        raise ConfigError("code task: the problem list is empty")
    if reward not in REWARDS:
        raise ConfigError(f"code task: reward {reward!r} is not one of {list(REWARDS)}")
    table = token_table(tokenizer, [p.prompt for p in problems])
    return CodeTask(problems=tuple(problems), table=table, limits=limits, workers=workers,
                    reward=reward)
