"""Kills at named moments, corrupt checkpoints, run-directory leftovers and non-finite
updates, on the tiny config through `experiments/train.py` (subprocesses).

A kill is deterministic: `MARFT_JAX_KILL_AT=<point>[:<step>]` makes the process SIGKILL
itself at that moment (`marft_jax/training/faults.py`). The subprocesses share a persistent
JAX compilation cache (`conftest.jax_subprocess_env`), so only the first one compiles.
"""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from marft_jax.errors import ConfigError
from tests.conftest import jax_subprocess_env

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "experiments" / "train.py"), "--config=configs/tiny_cpu.py"]


def _train(run_dir, *args, kill_at=None, expect=0):
    env = jax_subprocess_env(**({"MARFT_JAX_KILL_AT": kill_at} if kill_at else {}))
    proc = subprocess.run([*TRAIN, f"--run_dir={run_dir}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


def _metrics_text(run_dir):
    return (run_dir / "metrics.jsonl").read_text()


def _strict_rows(run_dir):
    """metrics.jsonl parsed as standard JSON (NaN / Infinity tokens are errors)."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return [json.loads(line, parse_constant=refuse)
            for line in _metrics_text(run_dir).splitlines()]


def _config(iterations=4):
    from configs.tiny_cpu import get_config

    config = get_config()
    config.train.iterations = iterations
    return config


def _final_state(run_dir, step):
    from marft_jax.training.checkpoint import RunCheckpointer
    from marft_jax.training.config import finalize
    from marft_jax.training.loop import restore_state
    from marft_jax.training.setup import build_setup

    checkpointer = RunCheckpointer(run_dir, keep=3, async_save=False)
    try:
        state, game, _ = restore_state(build_setup(finalize(_config())), checkpointer, step)
    finally:
        checkpointer.close()
    return jax.tree_util.tree_leaves((state, game))


def _assert_same_state(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of 4 iterations."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    _train(run_dir, "--config.train.iterations=4")
    return run_dir


@pytest.mark.slow
def test_kills_at_named_moments_then_resume_match_an_uninterrupted_run(reference, tmp_path):
    """A 3-iteration run killed while compiling (before any checkpoint: the "before" row
    must not double), during a checkpoint save, mid-iteration and after its final
    evaluation, resumed each time; then extended to 4 iterations (its old final-evaluation
    row must go). Metrics and final state equal the uninterrupted 4-iteration run's, bit
    for bit. (A torn last line: `test_resumed_rows_...` below, and the `metrics_row` kill
    point.)"""
    run_dir = tmp_path / "killed"
    _train(run_dir, kill_at="compile:1", expect=-signal.SIGKILL)
    for point in ("checkpoint:1", "update:2", "final_eval"):
        _train(run_dir, "--resume", kill_at=point, expect=-signal.SIGKILL)
    rows = _metrics_text(run_dir).splitlines()
    assert [json.loads(r)["step"] for r in rows] == [0, 1, 2, 3, 3]  # finished, killed late
    _train(run_dir, "--config.train.iterations=4", "--resume")
    assert _metrics_text(run_dir) == _metrics_text(reference)
    _assert_same_state(_final_state(run_dir, 4), _final_state(reference, 4))


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_and_is_kept(reference, tmp_path):
    from marft_jax.training.config import finalize
    from marft_jax.training.loop import load_trained_adapters
    from marft_jax.training.setup import build_setup

    run_dir = tmp_path / "corrupt"
    shutil.copytree(reference, run_dir)
    for path in (run_dir / "checkpoints" / "4" / "state").rglob("*"):  # truncated data files
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:10])
    setup = build_setup(finalize(_config()))
    assert load_trained_adapters(setup, run_dir)[1] == 3  # evaluate / export fall back
    with pytest.raises(ConfigError, match="no checkpoint restores"):
        load_trained_adapters(setup, run_dir, 4)  # an explicit step: one line, no traceback
    proc = _train(run_dir, "--config.train.iterations=4", "--resume")
    warnings = [line for line in proc.stderr.splitlines() if "does not restore" in line]
    assert len(warnings) == 1 and "step 4" in warnings[0]
    assert (run_dir / "corrupt_checkpoints" / "4").is_dir()  # set aside, never deleted
    assert _metrics_text(run_dir) == _metrics_text(reference)
    _assert_same_state(_final_state(run_dir, 4), _final_state(reference, 4))
    (run_dir / "checkpoints" / "4" / "meta" / "metadata").unlink()  # a missing metadata file
    assert load_trained_adapters(setup, run_dir)[1] == 3


@pytest.mark.slow
def test_poisoned_critic_is_noticed_rolled_back_and_never_checkpointed(tmp_path):
    run_dir = tmp_path / "poisoned"
    proc = _train(run_dir, "--config.faults.kind=nan_critic", "--config.faults.iteration=2",
                  "--config.train.rollback_after=2", "--config.train.iterations=4")
    lines = proc.stderr.splitlines()
    assert sum("non-finite update:" in line for line in lines) == 2
    assert sum("rolled back to the checkpoint of step 1" in line for line in lines) == 1
    rows = _strict_rows(run_dir)  # standard JSON: the NaN losses are null
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 4]
    assert json.loads((run_dir / "summary.json").read_text())["rollbacks"] == 1
    for leaf in _final_state(run_dir, 4):
        if np.issubdtype(np.asarray(leaf).dtype, np.floating):
            assert np.all(np.isfinite(np.asarray(leaf)))


# ---------------------------------------------------------------------------------------
# in-process: the run directory and metrics.jsonl


def _rows(*records):
    return [json.dumps(r) for r in records]


def test_resumed_rows_drop_later_steps_final_evaluations_and_torn_lines():
    from marft_jax.training.run_dir import _resumed_rows

    before, it1 = {"step": 0, "eval/accuracy": 0.5}, {"step": 1, "rollout/score": 0.1}
    after = {"step": 1, "eval/accuracy": 0.7}
    lines = _rows(before, it1, after) + ['{"step": 2, "rollout/sc']
    assert _resumed_rows(lines, 2) == _rows(before, it1)  # final eval redone, torn dropped
    assert _resumed_rows(lines, 0) == []  # no checkpoint: everything is redone


def test_metrics_rows_are_standard_json(tmp_path):
    from marft_jax.training.run_dir import MetricsWriter

    writer = MetricsWriter(tmp_path)
    writer.write(1, {"loss": np.array([np.nan, 1.0, np.inf]), "x": float("-inf")})
    writer.close()
    assert _strict_rows(tmp_path) == [{"step": 1, "loss/0": None, "loss/1": 1.0,
                                       "loss/2": None, "x": None}]


def test_run_dir_leftovers_fewer_iterations_and_changed_fields_are_refused(tmp_path):
    from marft_jax.training.run_dir import prepare_run_dir

    run = tmp_path / "run"
    (run / "checkpoints" / "12").mkdir(parents=True)  # another run's leftovers
    with pytest.raises(ConfigError, match="checkpoints .* but no config.json"):
        prepare_run_dir(_config(), run, resume=False)
    assert not (run / "config.json").exists()
    (run / "checkpoints" / "12").rmdir()
    prepare_run_dir(_config(14), run, resume=False)
    (run / "checkpoints" / "12").mkdir()
    with pytest.raises(ConfigError, match=r"'train.iterations': 5 is fewer than the 12"):
        prepare_run_dir(_config(5), run, resume=True)
    changed = _config(14)
    changed.ppo.clip_eps, changed.seed = 0.1, 3
    with pytest.raises(ConfigError, match=r"ppo.clip_eps: stored 0.2, given 0.1; seed: "
                                          r"stored 0, given 3"):
        prepare_run_dir(changed, run, resume=True)
    prepare_run_dir(_config(20), run, resume=True)  # more iterations: accepted
    stored = json.loads((run / "config.json").read_text())
    del stored["faults"], stored["task"]["grader"]  # a run from before these fields
    (run / "config.json").write_text(json.dumps(stored))
    prepare_run_dir(_config(20), run, resume=True)  # left at their defaults: accepted


def test_orbax_skipping_a_save_is_an_error(tmp_path):
    from marft_jax.training.checkpoint import RunCheckpointer

    checkpointer = RunCheckpointer(tmp_path, keep=3, async_save=False)
    try:
        state = {"x": np.zeros(2, np.float32)}
        checkpointer.save(2, state, {"step": 2})
        with pytest.raises(RuntimeError, match="step 1 was not written"):
            checkpointer.save(1, state, {"step": 1})  # orbax skips a step below its latest
    finally:
        checkpointer.close()


def test_config_section_without_faults_still_finalizes():
    from marft_jax.training.config import finalize

    config = _config()
    del config["faults"]
    assert finalize(ml_collections.ConfigDict(config)).train.iterations == 4
