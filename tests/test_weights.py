"""HF checkpoint import/export round trip and clear errors for bad checkpoints."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from marft_jax.errors import ConfigError
from marft_jax.models import functional as F
from marft_jax.models.config import read_hf_config
from marft_jax.models.hf_export import save_hf_checkpoint
from marft_jax.models.weights import fill_base_state, iter_safetensors
from tests.conftest import tiny_config


def _load(directory):
    cfg = read_hf_config(directory)
    abstract = F.abstract_model(cfg)[1]
    return cfg, fill_base_state(abstract, iter_safetensors(directory), cfg, str(directory))


@pytest.fixture
def checkpoint(tmp_path):
    cfg = tiny_config("qwen2")
    _, base, _ = F.init_model(cfg, None, seed=3)
    save_hf_checkpoint(tmp_path, cfg, base)
    return tmp_path, cfg, base


def test_round_trip_is_exact(checkpoint):
    directory, cfg, base = checkpoint
    read_cfg, again = _load(directory)
    assert read_cfg == cfg
    for a, b in zip(jax.tree_util.tree_leaves(base), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_index_is_read(checkpoint):
    directory, cfg, base = checkpoint
    tensors = load_file(directory / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(directory / file))
    (directory / "model.safetensors").unlink()
    weight_map = {k: f for f, keys in shards.items() for k in keys}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _, again = _load(directory)
    for a, b in zip(jax.tree_util.tree_leaves(base), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_config_json(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.json: file not found"):
        read_hf_config(tmp_path)


def test_malformed_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json: invalid JSON at line 1"):
        read_hf_config(tmp_path)


def test_config_missing_field_is_named(checkpoint):
    directory, _, _ = checkpoint
    d = json.loads((directory / "config.json").read_text())
    del d["hidden_size"]
    (directory / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"config\.json: field 'hidden_size'"):
        read_hf_config(directory)


def test_unsupported_model_type_is_named(checkpoint):
    directory, _, _ = checkpoint
    d = json.loads((directory / "config.json").read_text())
    d["model_type"] = "gpt2"
    (directory / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"field 'model_type' is 'gpt2'"):
        read_hf_config(directory)


def test_missing_tensor_is_named(checkpoint):
    directory, _, _ = checkpoint
    tensors = load_file(directory / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"missing tensors for 1 parameters \(first: model\.layers\.1\.mlp\.up_proj\.weight\)"):
        _load(directory)


def test_wrong_shape_is_named(checkpoint):
    directory, _, _ = checkpoint
    tensors = load_file(directory / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.weight"] = np.zeros((3, 3), np.float32)
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(ConfigError,
                       match=r"'model\.layers\.0\.self_attn\.q_proj\.weight' has shape \(3, 3\), "
                             r"expected \(64, 64\)"):
        _load(directory)


def test_unknown_tensor_is_named(checkpoint):
    directory, _, _ = checkpoint
    tensors = load_file(directory / "model.safetensors")
    tensors["model.layers.0.self_attn.rel_bias"] = np.zeros((3,), np.float32)
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"tensor 'model\.layers\.0\.self_attn\.rel_bias'"):
        _load(directory)


def test_no_weights_file(checkpoint):
    directory, _, _ = checkpoint
    (directory / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"no model\.safetensors"):
        _load(directory)
