"""Memory of the update: rematerialised decoder layers (`ppo.remat`) and micro-batches
sized from a memory budget. Tiny models; results compared with the plain update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marft_jax.algorithms import batch as batch_lib
from marft_jax.algorithms import losses
from marft_jax.algorithms.advantages import CreditOrder
from marft_jax.algorithms.config import PPOConfig
from marft_jax.algorithms.state import create_train_state
from marft_jax.algorithms.update import objective
from marft_jax.errors import ConfigError
from marft_jax.models import functional as F
from marft_jax.models.config import LoraConfig
from tests.conftest import tiny_config
from tests.test_update import make_trajectory


@pytest.fixture(scope="module")
def model():
    graphdef, base, lora = F.init_model(tiny_config(), LoraConfig(num_adapters=2, rank=4,
                                                                  alpha=8.0), seed=0)
    return graphdef, base, jax.tree.map(lambda x: x + 0.05, lora)  # adapters that matter


def _objective_grads(model, traj, **changes):
    graphdef, base, lora = model
    config = PPOConfig(algorithm="marft_a", critic_hidden=(8,), critic_trunk="shared",
                       entropy_coef=0.01, **changes)
    state = create_train_state(config, lora, jax.random.key(0), 64, 2)
    batch, _ = batch_lib.prepare_batch(graphdef, config, CreditOrder.chain(2), lora,
                                       state.critic, base, traj, None, 4)
    count = losses.per_agent_sum(batch.valid)
    counts = (jnp.maximum(count, 1.0), jnp.maximum(jnp.sum(count), 1.0))
    ctx = (base, traj.adapter_ids, jnp.array([True, True]))
    grad = jax.jit(jax.grad(objective, argnums=2, has_aux=True), static_argnums=(0, 1))
    return grad(graphdef, config, (lora, state.critic), ctx, batch, *counts)


@pytest.mark.parametrize("remat", ["layers", "dots_with_no_batch_dims_saveable"])
def test_remat_gives_the_gradients_of_the_plain_forward(model, remat):
    traj = make_trajectory(6, rounds=1, agents=2, envs=4, obs_len=5, act_len=3,
                           target_share=0.5)
    plain = _objective_grads(model, traj)
    again = _objective_grads(model, traj, remat=remat)
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(plain[0][0]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 plain, again)


def test_remat_forward_equals_the_layer_loop(model):
    graphdef, base, lora = model
    tokens = jax.random.randint(jax.random.key(1), (3, 9), 1, 256)
    mask = jnp.arange(9)[None, :] >= jnp.array([[0], [2], [4]])
    ids = jnp.array([0, 1, -1])
    run = lambda remat: F.forward(graphdef, base, lora, tokens, F.positions_from_mask(mask),
                                  ids, mask, remat=remat)[0]
    np.testing.assert_allclose(run("layers"), run("none"), rtol=1e-6, atol=1e-6)


def test_an_unknown_remat_policy_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="'remat'"):
        PPOConfig(remat="everything")
