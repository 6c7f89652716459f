"""Decoder behaviour: KV cache, LoRA stacking and per-row adapter selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from marft_jax.models import functional as F
from marft_jax.models.decoder import KVCache
from marft_jax.models.layers import BASE_ADAPTER
from tests.conftest import tiny_config


def _random_lora(lora, seed=1, scale=0.2):
    leaves, treedef = jax.tree_util.tree_flatten(lora)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, new)


def _batch(rng, batch=3, length=9, vocab=256, pads=(0, 2, 4)):
    tokens = rng.integers(1, vocab, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), bool)
    for row, p in enumerate(pads[:batch]):
        mask[row, :p] = False
        tokens[row, :p] = 0
    return jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_incremental_decoding_matches_full_forward(model_type, lora3):
    cfg = tiny_config(model_type)
    graphdef, base, lora = F.init_model(cfg, lora3, seed=0)
    lora = _random_lora(lora)
    tokens, mask = _batch(np.random.default_rng(0), length=10)
    ids = jnp.array([0, 2, -1], jnp.int32)
    full = F.sequence_logits(graphdef, base, lora, tokens, mask, ids)  # [batch, tokens, vocab]

    prefill = 6
    slots = 16
    positions = F.positions_from_mask(mask)
    kv_valid = jnp.zeros((3, slots), bool).at[:, :prefill].set(mask[:, :prefill])
    cache = KVCache.zeros(cfg, 3, slots)
    hidden, cache = F.forward(graphdef, base, lora, tokens[:, :prefill], positions[:, :prefill],
                              ids, kv_valid, cache, 0)
    step_logits = [F.lm_logits(graphdef, base, lora, hidden)]
    for t in range(prefill, tokens.shape[1]):
        kv_valid = kv_valid.at[:, t].set(mask[:, t])
        hidden, cache = F.forward(graphdef, base, lora, tokens[:, t:t + 1],
                                  positions[:, t:t + 1], ids, kv_valid, cache, t)
        step_logits.append(F.lm_logits(graphdef, base, lora, hidden))
    incremental = jnp.concatenate(step_logits, axis=1)
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(incremental)[m], np.asarray(full)[m], atol=1e-4)


def test_zero_initialised_lora_equals_base_exactly(tiny_llama, lora3):
    graphdef, base, lora = F.init_model(tiny_llama, lora3, seed=0)
    tokens, mask = _batch(np.random.default_rng(1))
    base_logits = F.sequence_logits(graphdef, base, lora, tokens, mask, BASE_ADAPTER)
    for adapter in range(lora3.num_adapters):
        logits = F.sequence_logits(graphdef, base, lora, tokens, mask, adapter)
        np.testing.assert_array_equal(np.asarray(logits), np.asarray(base_logits))
    # ... and a trained (non-zero) adapter does change the output.
    changed = F.sequence_logits(graphdef, base, _random_lora(lora), tokens, mask, 0)
    assert float(jnp.max(jnp.abs(changed - base_logits))) > 1e-3


def test_vmapped_adapters_equal_python_loop(tiny_qwen2, lora3):
    graphdef, base, lora = F.init_model(tiny_qwen2, lora3, seed=0)
    lora = _random_lora(lora)
    tokens, mask = _batch(np.random.default_rng(2))
    fn = jax.jit(F.sequence_logits, static_argnums=0)
    vmapped = jax.vmap(fn, in_axes=(None, None, None, None, None, 0))(
        graphdef, base, lora, tokens, mask, jnp.arange(lora3.num_adapters))
    for adapter in range(lora3.num_adapters):
        single = fn(graphdef, base, lora, tokens, mask, adapter)
        np.testing.assert_allclose(np.asarray(vmapped[adapter]), np.asarray(single), atol=1e-5)
    assert float(jnp.max(jnp.abs(vmapped[0] - vmapped[1]))) > 1e-3


def test_mixed_adapter_batch_equals_separate_batches(tiny_llama, lora3):
    graphdef, base, lora = F.init_model(tiny_llama, lora3, seed=0)
    lora = _random_lora(lora)
    tokens, mask = _batch(np.random.default_rng(3), batch=3)
    per_row = jnp.array([2, -1, 0], jnp.int32)
    mixed = F.sequence_logits(graphdef, base, lora, tokens, mask, per_row)
    m = np.asarray(mask)
    for row, adapter in enumerate(per_row.tolist()):
        alone = F.sequence_logits(graphdef, base, lora, tokens, mask, adapter)
        np.testing.assert_allclose(np.asarray(mixed[row])[m[row]],
                                   np.asarray(alone[row])[m[row]], atol=1e-5)


def test_non_finite_adapter_does_not_leak_into_other_rows(tiny_llama, lora3):
    graphdef, base, lora = F.init_model(tiny_llama, lora3, seed=0)
    lora = _random_lora(lora)
    poisoned = jax.tree.map(lambda x: x.at[1].set(jnp.nan), lora)  # adapter 1: A and B NaN
    tokens, mask = _batch(np.random.default_rng(4), batch=3)
    ids = jnp.array([0, 1, -1], jnp.int32)
    clean = F.sequence_logits(graphdef, base, lora, tokens, mask, ids)
    dirty = F.sequence_logits(graphdef, base, poisoned, tokens, mask, ids)
    m = np.asarray(mask)
    for row in (0, 2):  # adapter 0 and the base are untouched, bitwise
        np.testing.assert_array_equal(np.asarray(dirty[row])[m[row]],
                                      np.asarray(clean[row])[m[row]])
    assert np.isnan(np.asarray(dirty[1])[m[1]]).all()


def test_switching_adapter_index_does_not_recompile(tiny_llama, lora3):
    graphdef, base, lora = F.init_model(tiny_llama, lora3, seed=0)
    tokens, mask = _batch(np.random.default_rng(4))
    traces = []

    def logits(*args):
        traces.append(args[-1])  # Python runs once per trace, not once per call
        return F.sequence_logits(*args)

    fn = jax.jit(logits, static_argnums=0)
    for adapter in (0, 1, 2, BASE_ADAPTER):
        fn(graphdef, base, lora, tokens, mask, jnp.int32(adapter))
    assert len(traces) == 1


def test_bfloat16_parameters_track_float32(lora3):
    cfg32 = tiny_config("llama")
    cfg16 = cfg32.replace(dtype="bfloat16")
    graphdef32, base32, lora_state = F.init_model(cfg32, lora3, seed=0)
    graphdef16, base16, _ = F.init_model(cfg16, lora3, seed=0)
    leaves = jax.tree_util.tree_leaves(base16)
    assert all(x.dtype == jnp.bfloat16 for x in leaves)
    base16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), base32)
    tokens, mask = _batch(np.random.default_rng(5))
    l32 = F.sequence_logits(graphdef32, base32, lora_state, tokens, mask, 0)
    l16 = F.sequence_logits(graphdef16, base16, lora_state, tokens, mask, 0)
    assert l16.dtype == jnp.float32
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(l16)[m], np.asarray(l32)[m], atol=0.05)


def test_split_separates_lora_from_base(tiny_llama, lora3):
    graphdef, base, lora = F.init_model(tiny_llama, lora3, seed=0)
    lora_leaves = jax.tree_util.tree_leaves(lora)
    assert len(lora_leaves) == 2 * 2 * tiny_llama.num_layers  # a and b, q and v, per layer
    assert all(x.shape[0] == lora3.num_adapters for x in lora_leaves)
    assert not any(isinstance(v, nnx.LoRAParam)
                   for _, v in nnx.to_flat_state(base))


def test_layers_are_traced_once_per_shape(tiny_llama, lora3, monkeypatch):
    """The layers share one graphdef, so a forward traces the layer once for all of them,
    differentiated or not (a SmolLM2 update traced each of its 30 layers: ~8 s of start-up).
    Shapes no other test uses, since JAX keeps traces across tests."""
    from marft_jax.models import decoder

    calls = []  # the layer's Python body runs once per trace
    layer_call = decoder.DecoderLayer.__call__
    monkeypatch.setattr(decoder.DecoderLayer, "__call__",
                        lambda self, *args: calls.append(1) or layer_call(self, *args))
    graphdef, base, lora = F.init_model(tiny_llama, lora3, seed=0)
    assert tiny_llama.num_layers == 2
    tokens, mask = _batch(np.random.default_rng(5), batch=2, length=13, pads=(0, 3))

    def loss(lora):
        return jnp.sum(F.sequence_logits(graphdef, base, lora, tokens, mask, 0))

    value, grads = jax.jit(jax.value_and_grad(loss))(lora)
    assert np.isfinite(float(value)) and jax.tree.leaves(grads)
    assert len(calls) == 1
    F.sequence_logits(graphdef, base, lora, tokens[:, :11], mask[:, :11], 0)  # new shapes
    assert len(calls) == 2
