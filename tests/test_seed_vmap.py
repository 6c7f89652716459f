"""Seed-vmapped training (`training/seed_vmap.py`) when a seed's updates go non-finite."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from marft_jax.training import seed_vmap
from marft_jax.training.config import finalize
from marft_jax.training.run_dir import prepare_run_dir, read_metrics
from marft_jax.training.study import load_config

ROOT = Path(__file__).resolve().parents[1]


def _exps(seeds, **overrides):
    sets = {"train.iterations": 4, "train.eval_every": 0, "train.rollback_after": 2,
            "train.eval_problems": 2, **overrides}
    return [finalize(load_config(ROOT / "configs" / "token_bench.py", dict(sets, seed=s)))
            for s in seeds]


def test_a_seed_gone_non_finite_is_trained_again_alone(tmp_path, monkeypatch):
    """Seed 1 starts with a NaN critic inside the vmapped program: its updates are skipped
    every iteration, so it is trained again by `loop.train` (a clean start, since the poison
    was the program's only); seed 0 keeps its vmapped result."""
    exps = _exps([0, 1])
    dirs = [tmp_path / "seed0", tmp_path / "seed1"]
    for exp, run in zip(exps, dirs):
        prepare_run_dir(exp.config, run, resume=False)
    clean = seed_vmap.initial_state

    def poisoned(setup, *args):
        state, game = clean(setup, *args)
        if setup.exp.seed == 1:
            state = state.replace(critic=jax.tree.map(lambda x: x * jnp.nan, state.critic))
        return state, game

    monkeypatch.setattr(seed_vmap, "initial_state", poisoned)
    first, second = seed_vmap.train_seeds(exps, dirs)
    assert "retrained_alone" not in first
    assert "consecutive non-finite updates" in second["retrained_alone"]
    stored = json.loads((dirs[1] / "summary.json").read_text())
    assert stored["retrained_alone"] == second["retrained_alone"]
    assert (dirs[1] / "checkpoints").is_dir()  # loop.train's run, not the program's
    for run in dirs:
        rows = read_metrics(run)
        losses = [r["update/value_loss"] for r in rows if "update/value_loss" in r]
        assert len(losses) == 4 and np.all(np.isfinite(losses)), losses


def test_configs_with_a_fault_do_not_vmap():
    exp, = _exps([0], **{"faults.kind": "nan_loss"})
    assert not seed_vmap.can_vmap_seeds(exp)
    assert seed_vmap.can_vmap_seeds(_exps([0])[0])
