"""Decoder and LoRA configuration, read from Hugging Face (transformers 5) config dicts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from marft_jax.errors import ConfigError
from marft_jax.jsonfile import read_json
from marft_jax.models.projections import PROJECTIONS

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding parameters (transformers 5 `rope_parameters`).

    Attributes:
        theta: base frequency.
        rope_type: "default", "linear" or "llama3".
        factor: scaling factor for "linear" and "llama3".
        low_freq_factor, high_freq_factor, original_max_position_embeddings: "llama3" only.
    """

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama / Qwen2 family decoder.

    Attributes:
        model_type: "llama" or "qwen2".
        vocab_size, hidden_size, intermediate_size, num_layers: sizes.
        num_heads, num_kv_heads, head_dim: attention layout (grouped-query when kv < q).
        rms_norm_eps: RMSNorm epsilon.
        rope: rotary embedding parameters.
        max_position_embeddings: longest supported context.
        tie_word_embeddings: whether the LM head reuses the embedding matrix.
        attention_bias: q/k/v projections carry biases (Qwen2).
        dtype: parameter and activation dtype name ("float32" or "bfloat16").
        bos_token_id, eos_token_id, pad_token_id: special ids from the checkpoint, if any.
        initializer_range: standard deviation of the random init of the embedding and every
            weight matrix (transformers' name; pretrained weights replace it). Random tiny
            models for RL need more than the usual 0.02: see `configs/tiny_cpu.py`.
    """

    model_type: str = "llama"
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    rms_norm_eps: float = 1e-5
    rope: RopeConfig = RopeConfig()
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"model config: dtype {self.dtype!r} is not one of {list(DTYPES)}")
        if not self.initializer_range > 0:
            raise ConfigError(f"model config: initializer_range must be positive, got "
                              f"{self.initializer_range!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model config: num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Stacked LoRA adapters (one per agent or per shared adapter name).

    Defaults follow the reference: r=8, alpha=16, q_proj and v_proj, no dropout.
    """

    num_adapters: int = 1
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def __post_init__(self):
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad:
            raise ConfigError(f"lora config: field 'targets' has unknown projections {bad}; "
                              f"choose from {list(LORA_TARGETS)}")
        if self.rank <= 0 or self.num_adapters <= 0:
            raise ConfigError("lora config: 'rank' and 'num_adapters' must be positive")


LORA_TARGETS = tuple(PROJECTIONS)  # every projection can carry an adapter


def _rope_from_hf(d: dict[str, Any]) -> RopeConfig:
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in ("default", "linear", "llama3"):
        raise ValueError(f"rope_parameters.rope_type {rope_type!r} is not supported "
                         "(default, linear, llama3)")
    return RopeConfig(
        theta=float(theta), rope_type=rope_type, factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            params.get("original_max_position_embeddings", 8192)))


def config_from_hf_dict(d: dict[str, Any], source: str = "<dict>",
                        dtype: str = "float32") -> ModelConfig:
    """Builds a ModelConfig from a transformers config dict.

    Args:
        d: the parsed `config.json`.
        source: file name used in error messages.
        dtype: parameter dtype to use ("float32" or "bfloat16").

    Raises:
        ConfigError: naming `source` and the field that is missing or unsupported.
    """
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"{source}: field 'model_type' is {model_type!r}; supported: "
                          f"{list(SUPPORTED_MODEL_TYPES)}")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads")
    for key in required:
        if not isinstance(d.get(key), int) or d[key] <= 0:
            raise ConfigError(f"{source}: field {key!r} is missing or not a positive integer "
                              f"(got {d.get(key)!r})")
    heads = d["num_attention_heads"]
    head_dim = d.get("head_dim") or d["hidden_size"] // heads
    try:
        rope = _rope_from_hf(d)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: field 'rope_parameters': {e}") from None
    return ModelConfig(
        model_type=model_type,
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=int(head_dim),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope=rope,
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", model_type == "qwen2")),
        attention_bias=bool(d.get("attention_bias", model_type == "qwen2")),
        dtype=dtype,
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=tuple(d["eos_token_id"]) if isinstance(d.get("eos_token_id"), list)
        else d.get("eos_token_id"),
        pad_token_id=d.get("pad_token_id"),
        initializer_range=float(d.get("initializer_range", 0.02)),
    )


def read_hf_config(model_dir: str | Path, dtype: str = "float32") -> ModelConfig:
    """Reads `config.json` from a Hugging Face checkpoint directory.

    Raises:
        ConfigError: when the file is missing, is not JSON, or has a bad field.
    """
    path = Path(model_dir) / "config.json"
    d = read_json(path, "a Hugging Face model directory needs config.json")
    return config_from_hf_dict(d, source=str(path), dtype=dtype)
