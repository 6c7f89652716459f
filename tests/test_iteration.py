"""`make_iteration`: the one iteration of the loop, the seed-vmapped program and the
benchmarks. Its results are tested through them (test_train_entry, test_reliability,
test_study); here, what it refuses and what it times."""

import dataclasses
import importlib
import sys

import jax
import numpy as np
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


def test_a_timed_iteration_reports_every_phase_and_trims(setup, monkeypatch):
    from marft_jax import hostmem

    releases = []
    monkeypatch.setattr(hostmem, "release_free_memory", lambda: releases.append(1))
    iteration = make_iteration(setup)
    state, game = initial_state(setup)
    out = iteration(setup.base, state, game, jax.random.key(0), 0, timed=True)
    assert tuple(out.seconds) == PHASES and all(s >= 0 for s in out.seconds.values())
    assert set(out.record) == {"rollout", "update"}
    assert int(out.state.step) == 1
    assert out.traj.action_tokens.shape[-1] == 2  # the token budget, under 32
    # train.release_host_memory: before the rollout, before the update, after compiling it
    assert len(releases) == 3 and len(iteration.compiled) == 1
    quiet = iteration(setup.base, out.state, out.game, jax.random.key(0), 1)
    assert quiet.seconds == {}
    assert len(releases) == 5 and len(iteration.compiled) == 1  # the executable reused
    exp = setup.exp
    off = dataclasses.replace(exp, train=dataclasses.replace(exp.train,
                                                             release_host_memory=False))
    plain = dataclasses.replace(iteration, setup=dataclasses.replace(setup, exp=off))
    plain.rollout_phase(setup.base, quiet.state, quiet.game, jax.random.key(0), 2)
    assert len(releases) == 5
    # The ahead-of-time executable is the jitted update's: the same new state.
    traj, words = iteration.prepare(out.traj)
    want, _ = plain.update_phase(setup.base, state, traj, words, jax.random.key(0), 0)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 jax.tree.leaves(want), jax.tree.leaves(out.state))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc: Linux")
def test_free_host_memory_goes_back_to_the_os():
    """What `train.release_host_memory` relies on: freed heap blocks under malloc's mmap
    threshold stay in the process until `malloc_trim` (glibc, Linux)."""

    from marft_jax import hostmem

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f
                        if line.startswith("VmRSS"))

    blocks = [np.ones(8192) for _ in range(4000)]  # 64 KiB each: ~260 MB of heap
    keep = blocks[::50]  # pins scattered blocks, as live arrays do
    del blocks
    held = rss()
    assert hostmem.release_free_memory()
    assert held - rss() > 150e6
    del keep


def test_shared_prefix_update_equals_the_whole_row_update(setup):
    """`ppo.shared_prefix` with the team's own layout: its prefixes are where the rollout
    put them, and each agent's observations fit its capacity (the update scores each
    agent's rows at that width), so the update on the same trajectory gives the same
    adapters and critic."""

    assert int(np.min(setup.layout.prefix.lengths)) > 0
    capacity = np.asarray(setup.rollout_config.agent_obs_tokens)  # [A]
    assert np.min(capacity) < setup.rollout_config.obs_tokens  # a narrower agent
    state, game = initial_state(setup)
    root = jax.random.key(0)
    whole = make_iteration(setup)
    shared = make_iteration(setup, ppo=setup.exp.ppo.replace(shared_prefix=True))
    _, traj = whole.rollout_phase(setup.base, state, game, root, 0)
    lengths = np.sum(np.asarray(traj.obs_mask), axis=-1)  # [R, A, E]
    assert np.all(lengths <= capacity[None, :, None])
    traj, words = whole.prepare(traj)
    want, want_metrics = whole.update_phase(setup.base, state, traj, words, root, 0)
    got, metrics = shared.update_phase(setup.base, state, traj, words, root, 0)
    for x, y in zip(jax.tree.leaves((got.lora, got.critic)),
                    jax.tree.leaves((want.lora, want.critic))):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    for name in ("policy_loss", "value_loss", "grad_norm"):
        np.testing.assert_allclose(metrics[name], want_metrics[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_the_rollout_leaves_the_action_level_critic_features(setup, shared_prefix):
    """The sampler's prefill hidden state at each observation's last token (with the
    rollout's adapters, whole prompts or a shared prefix) is the action-level "shared"
    trunk's feature, so the old values need no pass of their own."""
    import dataclasses


    from marft_jax.algorithms import batch as batch_lib
    from marft_jax.algorithms import scoring
    from marft_jax.algorithms.advantages import CreditOrder

    setup = dataclasses.replace(setup, rollout_config=dataclasses.replace(
        setup.rollout_config, shared_prefix=shared_prefix))
    state, game = initial_state(setup)
    state = state.replace(lora=jax.tree.map(lambda x: x + 0.05, state.lora))  # B != 0
    _, traj = make_iteration(setup).rollout_phase(setup.base, state, game,
                                                  jax.random.key(0), 0)
    want = scoring.trunk_features(setup.graphdef, setup.base, state.lora, traj.obs_tokens,
                                  traj.obs_mask, traj.action_tokens, traj.action_mask,
                                  traj.adapter_ids, 1)  # [R, A, E, 1, H]
    np.testing.assert_allclose(traj.obs_features, want[..., 0, :], atol=1e-5)
    ppo = setup.exp.ppo.replace(critic_trunk="shared")
    prepare = lambda t: batch_lib.prepare_batch(
        setup.graphdef, ppo, CreditOrder.chain(traj.num_agents), state.lora, state.critic,
        setup.base, t, None, traj.num_envs)[0].old_values
    np.testing.assert_allclose(prepare(traj), prepare(traj.replace(obs_features=None)),
                               atol=1e-5)
