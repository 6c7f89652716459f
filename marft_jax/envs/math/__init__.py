"""The math environment's host-side pieces: answer extraction, grading, datasets, tasks.

Everything here runs on the host (plain Python and NumPy); the rollout calls it through a
callback or a host loop. Sympy is only imported inside the grader's worker process.
"""

from marft_jax.envs.math.arithmetic import (ArithmeticTaskConfig, generate_problems,
                                            generate_split, split_problems)
from marft_jax.envs.math.datasets import (DATASETS, MathProblem, default_data_root,
                                          load_math_dataset, resolve_dataset_path)
from marft_jax.envs.math.extract import extract_answer, extract_reference
from marft_jax.envs.math.grader import grade_answer, grade_responses, math_equal
from marft_jax.envs.math.normalize import normalize_answer

__all__ = [
    "ArithmeticTaskConfig",
    "DATASETS",
    "MathProblem",
    "default_data_root",
    "extract_answer",
    "extract_reference",
    "generate_problems",
    "generate_split",
    "grade_answer",
    "grade_responses",
    "load_math_dataset",
    "math_equal",
    "normalize_answer",
    "resolve_dataset_path",
    "split_problems",
]
