"""Math benchmark loaders: MATH, MATH-500, GSM8K, CMATH, AIME 2024.

``load_math_dataset("gsm8k", "test")`` resolves a registered name and split to a file under
the data root; ``load_math_dataset("path/to/file.json")`` reads a file directly (a ``.json``
list of objects, or ``.jsonl`` with one object a line). Every record becomes a frozen
``MathProblem``; the ground truth is taken from ``final_answer`` (or ``answer``) and passed
through ``extract_reference``, so it is what the grader should compare against.

The data root is, in order: the ``data_root`` argument; the environment variable
``MARFT_JAX_DATA`` (either the shared data directory holding ``math/``, or the math
directory itself); ``../shared/data/math`` relative to the project root.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from marft_jax.envs.math.extract import extract_reference
from marft_jax.envs.math.normalize import normalize_answer
from marft_jax.errors import ConfigError
from marft_jax.jsonfile import read_json, read_jsonl
from marft_jax.paths import DATA_ENV_VAR as ENV_VAR, data_root


# name -> split -> file path relative to the math data root.
DATASETS: dict[str, dict[str, str]] = {
    "math": {"train": "MATH/train.json", "test": "MATH/test.json"},
    "math500": {"test": "MATH/test500.jsonl"},
    "gsm8k": {"train": "gsm8k/train.json", "test": "gsm8k/test.json"},
    "cmath": {"dev": "cmath/dev.json", "test": "cmath/test.json"},
    "aime2024": {"test": "aime_2024/test.json"},
}
_ALIASES = {"math-500": "math500", "math_500": "math500", "aime_2024": "aime2024",
            "aime-2024": "aime2024", "aime24": "aime2024"}
_ANSWER_FIELDS = ("final_answer", "answer")
_ID_FIELDS = ("id", "unique_id")


@dataclasses.dataclass(frozen=True)
class MathProblem:
    """One math problem.

    Attributes:
        problem: the question text.
        answer: the ground-truth answer, as the grader should see it. It may be empty: a few
            MATH records have lost theirs, and the grader never matches an empty answer.
        id: a stable identifier (the record's own id, or ``<dataset>/<split>/<index>``).
    """

    problem: str
    answer: str
    id: str


def default_data_root() -> Path:
    """The math data directory: ``$MARFT_JAX_DATA`` (or its ``math/``), else the shared one."""
    root = data_root()
    return root / "math" if (root / "math").is_dir() or ENV_VAR not in os.environ else root


def resolve_dataset_path(name_or_path: str | os.PathLike, split: str = "test", *,
                         data_root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The file behind a dataset name and split, or a direct path.

    Args:
        name_or_path: a registered name (see ``DATASETS``) or the path of a ``.json`` /
            ``.jsonl`` file, or of a directory holding ``<split>.json`` / ``<split>.jsonl``.
        split: the split of a registered name or directory (ignored for a file path).
        data_root: overrides ``default_data_root()``.

    Returns:
        ``(path, label)``: the file and the prefix used for generated problem ids.

    Raises:
        ConfigError: unknown split, or no such dataset file.
    """
    key = str(name_or_path).strip().lower()
    key = _ALIASES.get(key, key)
    if key in DATASETS:
        splits = DATASETS[key]
        if split not in splits:
            raise ConfigError(f"dataset {key!r}: unknown split {split!r} "
                              f"(available: {', '.join(sorted(splits))})")
        root = Path(data_root) if data_root is not None else default_data_root()
        path = root / splits[split]
        if not path.is_file():
            raise ConfigError(f"{path}: dataset file not found for {key!r} split {split!r}; "
                              f"pass data_root or set {ENV_VAR}")
        return path, f"{key}/{split}"
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        for suffix in (".json", ".jsonl"):
            if (path / f"{split}{suffix}").is_file():
                return path / f"{split}{suffix}", f"{path.name}/{split}"
        raise ConfigError(f"{path}: no {split}.json or {split}.jsonl in this directory")
    if path.is_file():
        return path, path.stem
    raise ConfigError(f"{name_or_path}: neither a dataset name "
                      f"({', '.join(sorted(DATASETS))}) nor an existing file")


def load_math_dataset(name_or_path: str | os.PathLike, split: str = "test", *,
                      data_root: str | os.PathLike | None = None,
                      skip_unanswerable: bool = False) -> list[MathProblem]:
    """Load a math benchmark as a list of ``MathProblem`` (see the module docstring).

    Args:
        name_or_path: a registered name or a path (see ``resolve_dataset_path``).
        split: the split (``"train"``, ``"test"``, ``"dev"``; see ``DATASETS``).
        data_root: overrides the default data root.
        skip_unanswerable: drop records whose answer normalises to nothing (4 MATH records
            have an empty ``final_answer``, 2 a bare ``\\phantom{...}``); they can never be
            graded correct. By default every record is kept, so counts match the source.

    Returns:
        The problems in file order.

    Raises:
        ConfigError: naming the file and the record (index or JSONL line) and field, when a
            file cannot be read, holds no records, or a record lacks a usable ``problem`` or
            answer (a NaN or infinite answer is not one).
    """
    path, label = resolve_dataset_path(name_or_path, split, data_root=data_root)
    records = _read_records(path)
    if not records:
        raise ConfigError(f"{path}: the dataset holds no problem records")
    problems = [_to_problem(record, index, path, label) for index, record in records]
    if skip_unanswerable:
        problems = [problem for problem in problems if normalize_answer(problem.answer)]
    return problems


def _read_records(path: Path) -> list[tuple[int, object]]:
    """``(index, record)`` pairs of a JSON list or a JSONL file (index = position / line)."""
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    return list(enumerate(read_json(path, top=list)))


def _to_problem(record: object, index: int, path: Path, label: str) -> MathProblem:
    """One record as a ``MathProblem``; ``index`` is the list index or the JSONL line."""
    where = f"{path}: {'line' if path.suffix == '.jsonl' else 'record'} {index}"
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected an object, got {type(record).__name__}")
    problem = record.get("problem")
    if not isinstance(problem, str) or not problem.strip():
        raise ConfigError(f"{where}: field 'problem' is missing or not a non-empty string")
    field = next((name for name in _ANSWER_FIELDS if name in record), None)
    if field is None:
        raise ConfigError(f"{where}: field 'final_answer' (or 'answer') is missing")
    raw = record[field]
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ConfigError(f"{where}: field {field!r} must be a string or a number, "
                          f"got {type(raw).__name__}")
    if isinstance(raw, float) and not math.isfinite(raw) or \
            isinstance(raw, str) and raw.strip().lower() in ("nan", "-nan", "+nan"):
        raise ConfigError(f"{where}: field {field!r} is {raw!r}, not an answer")
    answer = extract_reference(str(raw))
    identifier = next((record[name] for name in _ID_FIELDS if name in record), None)
    identifier = str(identifier) if identifier is not None else f"{label}/{index}"
    return MathProblem(problem=problem, answer=answer, id=identifier)
