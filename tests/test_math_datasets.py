"""Tests of the math benchmark loaders (marft_jax.envs.math.datasets)."""

import dataclasses
import json
from pathlib import Path

import pytest

from marft_jax.envs.math import datasets
from marft_jax.envs.math.datasets import (DATASETS, MathProblem, default_data_root,
                                          load_math_dataset, resolve_dataset_path)
from marft_jax.envs.math.grader import math_equal
from marft_jax.errors import ConfigError

SHARED_MATH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math"
needs_shared = pytest.mark.skipif(
    not SHARED_MATH.is_dir(), reason=f"shared benchmark data not found at {SHARED_MATH}")


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)


@needs_shared
@pytest.mark.parametrize("name, split, count", [
    ("math", "train", 7500),
    ("math", "test", 5000),
    ("math500", "test", 500),
    ("gsm8k", "train", 7473),
    ("gsm8k", "test", 1319),
    ("cmath", "dev", 600),
    ("cmath", "test", 1098),
    ("aime2024", "test", 30),
])
def test_shared_benchmarks_load_with_their_counts(no_env, name, split, count):
    problems = load_math_dataset(name, split)
    assert len(problems) == count
    assert all(isinstance(problem, MathProblem) for problem in problems)
    assert all(problem.problem.strip() for problem in problems)
    assert len({problem.id for problem in problems}) == count


@needs_shared
def test_shared_answers_are_grader_ready(no_env):
    gsm8k = load_math_dataset("gsm8k", "train")
    assert all("," not in problem.answer for problem in gsm8k)  # "2,125" -> "2125"
    assert gsm8k[0].id == "gsm8k/train/0" and gsm8k[0].answer == "72"
    math500 = load_math_dataset("math-500")
    assert math500[0].id == "test/precalculus/807.json"
    assert math_equal("(3, \\pi/2)", math500[0].answer)
    aime = load_math_dataset("AIME_2024")
    assert aime[0].id == "60" and math_equal("204", aime[0].answer)
    math_train = load_math_dataset("math", "train")
    kept = load_math_dataset("math", "train", skip_unanswerable=True)
    assert 0 < len(math_train) - len(kept) < 10
    assert all(problem.answer for problem in kept)


@needs_shared
def test_data_root_argument_and_environment_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    assert default_data_root().resolve() == SHARED_MATH.resolve()
    monkeypatch.setenv(datasets.ENV_VAR, str(SHARED_MATH.parent))  # the data dir itself
    assert default_data_root() == SHARED_MATH.parent / "math"
    monkeypatch.setenv(datasets.ENV_VAR, str(SHARED_MATH))  # or its math/ directory
    assert default_data_root() == SHARED_MATH
    assert len(load_math_dataset("aime2024")) == 30
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path))
    with pytest.raises(ConfigError, match="dataset file not found"):
        load_math_dataset("aime2024")
    assert len(load_math_dataset("aime2024", data_root=SHARED_MATH)) == 30


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_registered_name_under_a_custom_root(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    _write_json(tmp_path / "gsm8k" / "test.json",
                [{"problem": "1 + 1?", "final_answer": "2"},
                 {"problem": "Big?", "final_answer": "1,000"}])
    problems = load_math_dataset("GSM8K", "test", data_root=tmp_path)
    assert problems == [MathProblem("1 + 1?", "2", "gsm8k/test/0"),
                        MathProblem("Big?", "1000", "gsm8k/test/1")]
    with pytest.raises(ConfigError, match="unknown split 'train2'.*available: test, train"):
        load_math_dataset("gsm8k", "train2", data_root=tmp_path)
    assert set(DATASETS) == {"math", "math500", "gsm8k", "cmath", "aime2024"}


def test_direct_paths_json_jsonl_and_directory(tmp_path):
    json_path = _write_json(tmp_path / "mine.json", [
        {"problem": "p0", "final_answer": "\\boxed{\\frac12}", "id": 7},
        {"problem": "p1", "answer": "work\n#### 1,234"},
        {"problem": "p2", "answer": 30},
    ])
    problems = load_math_dataset(json_path)
    assert [problem.answer for problem in problems] == ["\\frac12", "1234", "30"]
    assert [problem.id for problem in problems] == ["7", "mine/1", "mine/2"]
    jsonl_path = tmp_path / "test.jsonl"
    jsonl_path.write_text('{"problem": "q", "answer": "5", "unique_id": "u/1"}\n\n'
                          '{"problem": "r", "answer": "6"}\n', encoding="utf-8")
    problems = load_math_dataset(str(jsonl_path))
    assert problems == [MathProblem("q", "5", "u/1"), MathProblem("r", "6", "test/3")]
    assert resolve_dataset_path(tmp_path, "test")[0] == jsonl_path
    assert load_math_dataset(tmp_path, "mine")[0].id == "7"
    with pytest.raises(ConfigError, match="no nope.json or nope.jsonl"):
        load_math_dataset(tmp_path, "nope")
    problem = problems[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.answer = "6"


@pytest.mark.parametrize("content, message", [
    ('{"problem": "x", "final_answer": "1"}', "expected a JSON array at the top level"),
    ('[{"problem": "x", "final_answer": "1"}, ', "invalid JSON at line 1"),
    ('[{"final_answer": "1"}]', "record 0: field 'problem' is missing"),
    ('[{"problem": "ok", "final_answer": "1"}, {"problem": "  ", "final_answer": "1"}]',
     "record 1: field 'problem'"),
    ('[{"problem": 3, "final_answer": "1"}]', "record 0: field 'problem'"),
    ('[{"problem": "x"}]', "record 0: field 'final_answer' \\(or 'answer'\\) is missing"),
    ('[{"problem": "x", "final_answer": ["1"]}]', "record 0: field 'final_answer' must be"),
    ('[{"problem": "x", "final_answer": true}]', "record 0: field 'final_answer' must be"),
    ('["just a string"]', "record 0: expected an object, got str"),
])
def test_bad_json_files_name_the_file_and_field(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        load_math_dataset(path)
    assert str(path) in str(info.value)


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n',
                    encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.jsonl: invalid JSON at line 2"):
        load_math_dataset(path)
    path.write_text('{"problem": "a", "answer": "1"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.jsonl: line 2: expected an object"):
        load_math_dataset(path)


def test_unreadable_and_unknown_sources(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[{"problem": "caf\xe9", "final_answer": "1"}]')
    with pytest.raises(ConfigError, match="latin1.json: cannot read the file"):
        load_math_dataset(path)
    with pytest.raises(ConfigError, match="neither a dataset name .* nor an existing file"):
        load_math_dataset(tmp_path / "missing.json")


@pytest.mark.parametrize("content, message", [
    ("[]", "no problem records"),
    ('[{"problem": "1+1?", "answer": NaN}]', "not an answer"),
    ('[{"problem": "1+1?", "answer": "nan"}]', "not an answer"),
    ('[{"problem": "1+1?", "answer": Infinity}]', "not an answer"),
])
def test_empty_or_nan_datasets_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_math_dataset(path)
