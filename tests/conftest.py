"""Shared pytest fixtures: tiny model configs built in-process."""

import os

# Tests run on the CPU with a deterministic, single-threaded-friendly setup.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from marft_jax.models.config import LoraConfig, ModelConfig, RopeConfig  # noqa: E402


def tiny_config(model_type: str = "llama", **changes) -> ModelConfig:
    """A 2-layer, d=64 decoder with a 256-token vocabulary."""
    base = dict(model_type=model_type, vocab_size=256, hidden_size=64, intermediate_size=128,
                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6,
                rope=RopeConfig(theta=10000.0), max_position_embeddings=256,
                tie_word_embeddings=model_type == "qwen2",
                attention_bias=model_type == "qwen2")
    base.update(changes)
    return ModelConfig(**base)


@pytest.fixture
def tiny_llama() -> ModelConfig:
    return tiny_config("llama")


@pytest.fixture
def tiny_qwen2() -> ModelConfig:
    return tiny_config("qwen2")


@pytest.fixture
def lora3() -> LoraConfig:
    return LoraConfig(num_adapters=3, rank=4, alpha=8.0)
