"""Reproducibility studies: the seed-vmapped program, statistics, and the study entry point."""

import csv
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from marft_jax.errors import ConfigError
from marft_jax.training.config import finalize
from marft_jax.training.loop import train
from marft_jax.training.run_dir import prepare_run_dir, read_metrics
from marft_jax.training.seed_vmap import train_seeds
from marft_jax.training.study import (Condition, RunResult, load_study, markdown_table,
                                      mean_std_ci, summarize, train_command, write_csv)

ROOT = Path(__file__).resolve().parents[1]


def _exp(seed, iterations=2):
    config = importlib.import_module("configs.tiny_cpu").get_config()
    config.seed = seed
    config.train.iterations = iterations
    return finalize(config)


@pytest.fixture(scope="module")
def vmapped(tmp_path_factory):
    """Seeds 0 and 1 of tiny_cpu as one vmapped program."""
    root = tmp_path_factory.mktemp("vmapped")
    exps = [_exp(0), _exp(1)]
    dirs = [root / "seed0", root / "seed1"]
    for e, d in zip(exps, dirs):
        prepare_run_dir(e.config, d, resume=False)
    return train_seeds(exps, dirs), dirs


def _assert_records_close(a, b, rtol=1e-4, atol=1e-5):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if ra[k] is None or rb[k] is None:
                assert ra[k] == rb[k], k
            else:
                np.testing.assert_allclose(ra[k], rb[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.slow
def test_vmapped_seeds_reproduce_sequential_runs(vmapped, tmp_path):
    summaries, dirs = vmapped
    for seed, d in zip((0, 1), dirs):
        exp = _exp(seed)
        run_dir = tmp_path / f"seq{seed}"
        prepare_run_dir(exp.config, run_dir, resume=False)
        train(exp, run_dir)
        _assert_records_close(read_metrics(d), read_metrics(run_dir))
    assert read_metrics(dirs[0]) != read_metrics(dirs[1])  # seeds differ
    assert all(s["iterations"] == 2 and s["eval_after"] is not None for s in summaries)


@pytest.mark.slow
def test_same_seed_gives_a_bitwise_identical_learning_curve(vmapped, tmp_path):
    # The vmapped program's width is part of it: the same seed set reproduces bit for bit
    # (a seed alone matches it to float rounding, as the test above shows for train.py).
    _, dirs = vmapped
    exps = [_exp(0), _exp(1)]
    again = [tmp_path / "seed0", tmp_path / "seed1"]
    for e, d in zip(exps, again):
        prepare_run_dir(e.config, d, resume=False)
    train_seeds(exps, again)
    for a, b in zip(again, dirs):
        assert read_metrics(a) == read_metrics(b)


def test_vmapped_seeds_must_share_everything_but_the_seed():
    config = importlib.import_module("configs.tiny_cpu").get_config()
    config.ppo.lr_actor = 0.5
    exp0, exp1 = _exp(0), finalize(config)
    with pytest.raises(ConfigError, match="differ only in 'seed'"):
        train_seeds([exp0, exp1], ["a", "b"])


def test_statistics_use_the_t_interval():
    s = mean_std_ci([0.2, 0.4, 0.6])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.4) and s["std"] == pytest.approx(0.2)
    assert s["ci95"] == pytest.approx(4.303 * 0.2 / math.sqrt(3))
    one = mean_std_ci([0.5, None])
    assert one["n"] == 1 and math.isnan(one["ci95"])


def test_summary_table_and_csv(tmp_path):
    results = [RunResult("a", s, 0.1 * s, 0.1 * s + 0.3, 0.5, 10.0, 4, f"cmd {s}", "d",
                         [(1, 0.1), (2, 0.2)]) for s in range(3)]
    rows = summarize(results, ["a"])
    assert rows[0]["gain"]["mean"] == pytest.approx(0.3) and rows[0]["gain"]["std"] < 1e-12
    table = markdown_table(rows)
    assert "| a | 3 | 4 | 10.0 ± 10.0" in table and "`cmd 0`" in table
    write_csv(results, tmp_path / "r.csv")
    with open(tmp_path / "r.csv") as f:
        got = list(csv.DictReader(f))
    assert [r["seed"] for r in got] == ["0", "1", "2"]
    assert float(got[2]["gain"]) == pytest.approx(0.3)


def test_train_command_names_the_seed_and_overrides():
    c = Condition("x", "configs/default.py", {"ppo.algorithm": "grpo", "ppo.group_size": 4})
    cmd = train_command(c, 2, "runs/s/x/seed2", {"train.iterations": 5})
    assert cmd[:3] == ["python", "experiments/train.py", "--config=configs/default.py"]
    assert "--config.ppo.algorithm=grpo" in cmd and "--config.seed=2" in cmd
    assert "--config.train.iterations=5" in cmd and "--run_dir=runs/s/x/seed2" in cmd


def test_shipped_studies_load():
    for path in sorted((ROOT / "configs" / "studies").glob("*.py")):
        assert load_study(path)


def _study(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "repro_study.py"),
                           "--study=configs/studies/tokens.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_repro_study_runs_and_reports(tmp_path):
    """The study CLI end to end on its default, seed-vmapped path (the sequential path runs
    `experiments/train.py` per seed, tested in test_train_entry, and gives the vmapped
    numbers: `test_vmapped_seeds_reproduce_sequential_runs`)."""
    common = ["--only=untrained,marft_a", "--set=train.iterations=2"]
    vm = _study(*common, "--seeds=0", f"--out={tmp_path / 'vm'}")
    assert vm.returncode == 0, vm.stderr[-3000:]
    assert (tmp_path / "vm" / "learning_curves.png").stat().st_size > 0
    assert "| marft_a | 1 | 2 |" in (tmp_path / "vm" / "summary.md").read_text()
    rows = list(csv.DictReader(open(tmp_path / "vm" / "results.csv")))
    assert [(r["condition"], r["seed"], r["iterations"]) for r in rows] == [
        ("untrained", "0", "0"), ("marft_a", "0", "2")]
    assert "repro_study.py" in rows[1]["command"]
    assert rows[1]["final_score"] != "" and rows[0]["final_score"] == ""
    # Untrained: evaluation only, so after == before.
    assert rows[0]["before"] == rows[0]["after"]
    summary = json.loads((tmp_path / "vm" / "untrained" / "seed0" / "summary.json").read_text())
    assert summary["iterations"] == 0
    # (Reusing a finished run: test_interrupted_or_rerun_conditions_resume_or_set_runs_aside.)
    # --report_only runs nothing: seed 1 is reported missing, seed 0's rows stay.
    report = _study(*common, "--seeds=0,1", f"--out={tmp_path / 'vm'}", "--report_only")
    assert report.returncode == 0, report.stderr[-2000:]
    assert "marft_a seed 1: not run" in report.stderr
    assert not (tmp_path / "vm" / "marft_a" / "seed1").exists()
    assert len(list(csv.DictReader(open(tmp_path / "vm" / "results.csv")))) == 2


@pytest.mark.parametrize("args, message", [
    (["--set=ppo.lr_actor=abc"], "ppo.lr_actor"),
    (["--only=nope"], "--only"),
    (["--set=nofield.x=1"], "nofield.x"),
])
@pytest.mark.slow
def test_repro_study_bad_input_exits_2(args, message, tmp_path):
    proc = _study(*args, f"--out={tmp_path / 'out'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_gain_against_a_baseline_condition_when_runs_skip_their_own_before():
    base = [RunResult("untrained", 0, 0.2, 0.2, None, 5.0, 0, "u", "d", [])]
    runs = [RunResult("t", s, None, 0.4 + 0.1 * s, 0.5, 10.0, 4, "c", "d", [(1, 0.1)],
                      after_sampled=0.3, after_strict=0.0) for s in range(3)]
    rows = summarize(base + runs, ["untrained", "t"], {"t": "untrained"})
    assert rows[1]["before"]["mean"] == pytest.approx(0.2)
    assert rows[1]["gain"]["mean"] == pytest.approx(0.3)
    assert rows[1]["after_sampled"]["mean"] == pytest.approx(0.3)
    table = markdown_table(rows)
    assert "| t | 3 | 4 | 20.0 ± 0.0" in table and "| 30.0 ± 0.0 [30.0, 30.0] | 0.0" in table
    # Without the baseline's runs there is no before, and no gain.
    assert summarize(runs, ["t"], {"t": "untrained"})[0]["gain"]["n"] == 0


def test_chunks_end_at_every_evaluation():
    from marft_jax.training.seed_vmap import _chunks

    assert _chunks(10, 0) == [(0, 10)]
    assert _chunks(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert _chunks(8, 4) == [(0, 4), (4, 4)]


def test_comparison_gives_the_welch_interval_and_both_spreads():
    from marft_jax.training.study import Comparison, compare, comparisons_table

    run = lambda name, seed, after: RunResult(name, seed, None, after, None, 1.0, 1, "c", "d",
                                              [])
    results = ([run("team", s, a) for s, a in enumerate([0.46, 0.50, 0.40])]
               + [run("one", s, a) for s, a in enumerate([0.30, 0.20, 0.25, 0.35])])
    c = compare(results, Comparison("team", "one", "team > one?"))
    a, b = np.array([0.46, 0.50, 0.40]), np.array([0.30, 0.20, 0.25, 0.35])
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    assert 4 < df < 5  # Welch-Satterthwaite: t(0.975, 4) = 2.776 (rounded down: wider)
    assert c["diff"] == pytest.approx(a.mean() - b.mean())
    assert c["ci95"] == pytest.approx(2.776 * math.sqrt(va + vb))
    assert c["first"]["std"] == pytest.approx(a.std(ddof=1)) and c["second"]["n"] == 4
    table = comparisons_table([c])
    assert "| team > one? | +17.8 [+5.8, +29.9] |" in table, table
    one_seed = compare(results[:1] + results[3:], Comparison("team", "one"))
    assert math.isnan(one_seed["ci95"]) and "+18.5 |" in comparisons_table([one_seed])


def test_comparisons_must_name_conditions_of_the_study(tmp_path):
    from marft_jax.training.study import load_comparisons

    path = tmp_path / "s.py"
    path.write_text("from marft_jax.training.study import Comparison, Condition\n"
                    "def get_study():\n    return [Condition('a', 'c.py'), Condition('b', 'c.py')]\n"
                    "def get_comparisons():\n    return [Comparison('a', 'x')]\n")
    with pytest.raises(ConfigError, match="no condition 'x'"):
        load_comparisons(path)
    assert [c.second for c in load_comparisons(ROOT / "configs/studies/learning.py")] == \
        ["ppo_single", "ippo_dual", "marft_t_dual", "grpo_dual"]


def test_interrupted_or_rerun_conditions_resume_or_set_runs_aside(tmp_path):
    from marft_jax.cli.study import plan_run_dirs

    def run(name, summary=None, config=True):
        d = tmp_path / name
        d.mkdir()
        if config:
            (d / "config.json").write_text("{}")
        if summary is not None:
            (d / "summary.json").write_text(json.dumps({"iterations": summary}))
        return d

    done, cut, fresh = run("done", 4), run("cut"), tmp_path / "fresh"
    # Sequential: the finished run is reused, the interrupted one resumed, the new one run.
    assert plan_run_dirs([done, cut, fresh], 4, rerun=False, vmapped=False) == ([1, 2], {1})
    assert (cut / "config.json").exists()
    # A finished run with other iterations, or --rerun, is set aside, never deleted.
    assert plan_run_dirs([done], 4, rerun=True, vmapped=False) == ([0], set())
    assert not done.exists() and (tmp_path / "done.replaced-1" / "summary.json").exists()
    # Seed-vmapped seeds cannot resume: the condition starts over, every old run kept.
    done, stray = run("done", 4), run("stray", config=False)
    (stray / "notes.txt").write_text("x")
    assert plan_run_dirs([done, cut, stray], 4, rerun=False, vmapped=True) == ([0, 1, 2], set())
    assert not any(d.exists() for d in (done, cut, stray))
    assert {p.name for p in tmp_path.iterdir()} >= {"done.replaced-2", "cut.interrupted-1",
                                                     "stray.interrupted-1"}
