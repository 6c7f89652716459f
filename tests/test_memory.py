"""Memory of the update: rematerialised decoder layers (`ppo.remat`) and micro-batches
sized from a memory budget. Tiny models; results compared with the plain update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marft_jax.algorithms import batch as batch_lib
from marft_jax.algorithms import losses, memory
from marft_jax.algorithms.advantages import CreditOrder
from marft_jax.algorithms.config import PPOConfig
from marft_jax.algorithms.state import create_train_state
from marft_jax.algorithms.update import make_update, objective
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


@pytest.mark.parametrize("changes", [
    {"remat": "layers"}, {"remat": "dots_with_no_batch_dims_saveable"},
    {"head_chunk": 5}],  # 24 action positions: four chunks and a padded fifth
    ids=lambda changes: ",".join(f"{k}={v}" for k, v in changes.items()))
def test_remat_gives_the_gradients_of_the_plain_forward(model, changes):
    traj = make_trajectory(6, rounds=1, agents=2, envs=4, obs_len=5, act_len=3,
                           target_share=0.5)
    plain = _objective_grads(model, traj)
    again = _objective_grads(model, traj, **changes)
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(plain[0][0]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-7),
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
    with pytest.raises(ConfigError, match="'head_chunk'"):
        PPOConfig(head_chunk=-1)


# ------------------------------------------------------- micro-batches from a memory budget

def test_the_budget_chooses_the_fewest_micro_batches_that_fit():
    cfg = tiny_config()
    fit = lambda envs: memory.peak_bytes(cfg, 2 * envs, 24, 8, "none")
    choose = lambda budget, remat="none": memory.choose_grad_accum_steps(
        cfg, rows_per_env=2, tokens=24, action_tokens=8, envs_per_minibatch=8, remat=remat,
        budget=budget)
    assert choose(fit(8)) == 1
    assert choose(fit(8) - 1) == 2
    assert choose(fit(2)) == 4
    assert choose(fit(1)) == 8
    with pytest.raises(ConfigError, match="train.memory_budget_gb"):
        choose(fit(1) - 1)
    # the estimate grows with rows and tokens, and remat needs less for a deep model
    deep = tiny_config(num_layers=24)
    assert memory.activation_bytes(deep, 16, 256, 64, "layers") < \
        memory.activation_bytes(deep, 16, 256, 64, "none")
    assert memory.activation_bytes(cfg, 4, 24, 8, "none") < \
        memory.activation_bytes(cfg, 8, 24, 8, "none") < \
        memory.activation_bytes(cfg, 8, 48, 8, "none")


def test_budgeted_micro_batches_give_the_update_of_one_batch(model):
    """The update with the micro-batch count a budget chooses equals the one-batch update
    (losses, gradient norms, new adapters and critic) within float tolerance."""
    graphdef, base, lora = model
    traj = make_trajectory(8, rounds=1, agents=2, envs=8, obs_len=6, act_len=3,
                           target_share=0.5)
    cfg = tiny_config()
    budget = memory.peak_bytes(cfg, 2 * 2, 9, 3, "layers")  # 2 envs per micro-batch
    steps = memory.choose_grad_accum_steps(cfg, 2, 9, 3, 8, "layers", budget)
    assert steps == 4
    results = []
    for accum, remat in ((1, "none"), (steps, "layers")):
        config = PPOConfig(algorithm="marft_a", epochs=1, num_minibatches=1,
                           grad_accum_steps=accum, remat=remat, critic_hidden=(8,),
                           lr_actor=1e-3, lr_critic=1e-3, advantage_norm="batch")
        state = create_train_state(config, lora, jax.random.key(0), 64, 2)
        results.append(make_update(graphdef, config)(state, base, traj, jax.random.key(1)))
    (one, m1), (micro, m2) = results
    for name in ("policy_loss", "value_loss", "grad_norm", "critic_grad_norm", "entropy"):
        np.testing.assert_allclose(m1[name], m2[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert float(jnp.max(m1["grad_norm"])) > 0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 (one.lora, one.critic), (micro.lora, micro.critic))


def test_setup_resolves_grad_accum_zero_from_the_budget():
    import importlib

    from marft_jax.training.config import finalize
    from marft_jax.training.setup import build_setup

    c = importlib.import_module("configs.tiny_cpu").get_config()
    c.ppo.grad_accum_steps = 0
    c.train.memory_budget_gb = 1000.0
    setup = build_setup(finalize(c))
    assert setup.exp.ppo.grad_accum_steps == 1
    c.train.memory_budget_gb = 1e-3  # less than the runtime itself
    with pytest.raises(ConfigError, match="train.memory_budget_gb"):
        build_setup(finalize(c))
    c.train.memory_budget_gb = -1.0
    with pytest.raises(ConfigError, match="train.memory_budget_gb"):
        finalize(c)
    with pytest.raises(ConfigError, match="grad_accum_steps=0"):
        make_update(None, PPOConfig(grad_accum_steps=0))


def test_counted_forward_flops_match_xla_cost_analysis():
    """The matmul count of the decoder and head is XLA's count (which adds the elementwise
    work) to within a few percent."""
    from marft_jax.models import flops

    cfg = tiny_config(hidden_size=128, intermediate_size=256, head_dim=32)
    lora_cfg = LoraConfig(num_adapters=2, rank=4, alpha=8.0)
    graphdef, base, lora = F.init_model(cfg, lora_cfg)
    rows, tokens, k = 6, 40, 8

    def logits(base, lora, tokens_, mask, ids):
        hidden, _ = F.forward(graphdef, base, lora, tokens_, F.positions_from_mask(mask), ids,
                              mask)
        return F.lm_logits(graphdef, base, lora, hidden[:, -k:])

    compiled = jax.jit(logits).lower(base, lora, jnp.zeros((rows, tokens), jnp.int32),
                                     jnp.ones((rows, tokens), bool),
                                     jnp.zeros((rows,), jnp.int32)).compile()
    xla = compiled.cost_analysis()["flops"]
    counted = (flops.layers_forward_flops(cfg, lora_cfg, rows, tokens)
               + flops.head_flops(cfg, rows * k))
    assert 0.95 * xla <= counted <= xla
    assert flops.layers_forward_flops(cfg, lora_cfg, rows, tokens, backward=True) > counted

    # A shared prefix: 2 prefixes of 24 tokens once, the rows' 16 tokens attend to them.
    from marft_jax.sampling.types import SharedPrefix

    groups, length, own = 2, 24, 16

    def prefixed(base, lora, prefix_tokens, row_tokens):
        prefix = SharedPrefix(tokens=prefix_tokens, mask=jnp.ones((groups, length), bool),
                              adapter_ids=jnp.arange(groups, dtype=jnp.int32),
                              group=jnp.arange(rows, dtype=jnp.int32) % groups)
        return F.prefix_forward(graphdef, base, lora, prefix, row_tokens,
                                jnp.ones((rows, length + own), bool), prefix.group)[:2]

    xla = jax.jit(prefixed).lower(base, lora, jnp.zeros((groups, length), jnp.int32),
                                  jnp.zeros((rows, own), jnp.int32)).compile()
    xla = xla.cost_analysis()["flops"]
    counted = (flops.layers_forward_flops(cfg, lora_cfg, groups, length)
               + flops.layers_forward_flops(cfg, lora_cfg, rows, own, context=length))
    assert 0.95 * xla <= counted <= xla
