"""The code environment: problems graded by running their unit tests in a sandbox.

Everything here runs on the host; the rollout reaches the grader through
`flexmg.driver.HostReward`. See `sandbox.py` for what is and is not isolated.
"""

from marft_jax.envs.code.builtin import builtin_problems
from marft_jax.envs.code.datasets import (CodeProblem, load_code_dataset, load_code_jsonl,
                                          load_humaneval)
from marft_jax.envs.code.extract import extract_code
from marft_jax.envs.code.sandbox import (Job, SandboxLimits, SandboxResult, TestSuite,
                                         grade_batch, run_in_sandbox, split_tests)
from marft_jax.envs.code.task import CodeTask, build_code_task, candidate_program

__all__ = [
    "CodeProblem",
    "CodeTask",
    "Job",
    "SandboxLimits",
    "SandboxResult",
    "TestSuite",
    "build_code_task",
    "builtin_problems",
    "candidate_program",
    "extract_code",
    "grade_batch",
    "load_code_dataset",
    "load_code_jsonl",
    "load_humaneval",
    "run_in_sandbox",
    "split_tests",
]
