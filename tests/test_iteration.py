"""`make_iteration`: the one iteration of the loop, the seed-vmapped program and the
benchmarks. Its results are tested through them (test_train_entry, test_reliability,
test_study); here, what it refuses and what it times."""

import importlib

import jax
import pytest

from marft_jax.errors import ConfigError
from marft_jax.training.config import finalize
from marft_jax.training.iteration import PHASES, make_iteration
from marft_jax.training.loop import initial_state
from marft_jax.training.setup import build_setup


@pytest.fixture(scope="module")
def setup():
    return build_setup(finalize(importlib.import_module("configs.tiny_cpu").get_config()))


def test_a_traced_iteration_refuses_word_counts_and_timings(setup):
    word = setup.exp.ppo.replace(logprob_norm="word")
    with pytest.raises(ConfigError, match="logprob_norm"):
        make_iteration(setup, ppo=word, host_steps=False)
    traced = make_iteration(setup, host_steps=False)
    state, game = initial_state(setup)
    with pytest.raises(ValueError, match="timed"):
        traced(setup.base, state, game, jax.random.key(0), 0, timed=True)
    with pytest.raises(ValueError, match="state"):
        make_iteration(setup, plan=object())


def test_a_timed_iteration_reports_every_phase_and_trims(setup):
    iteration = make_iteration(setup)
    state, game = initial_state(setup)
    out = iteration(setup.base, state, game, jax.random.key(0), 0, timed=True)
    assert tuple(out.seconds) == PHASES and all(s >= 0 for s in out.seconds.values())
    assert set(out.record) == {"rollout", "update"}
    assert int(out.state.step) == 1
    assert out.traj.action_tokens.shape[-1] == 2  # the token budget, under 32
    quiet = iteration(setup.base, out.state, out.game, jax.random.key(0), 1)
    assert quiet.seconds == {}
