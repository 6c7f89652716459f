"""Writes the decoder's base state as a Hugging Face checkpoint (config.json + safetensors).

The inverse of `weights.fill_base_state`: used to export merged models and to build small
checkpoints for tests without torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from marft_jax.models.config import ModelConfig
from marft_jax.models.projections import BLOCKS


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The transformers-5 `config.json` dict describing `config`."""
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[config.model_type]
    rope: dict[str, Any] = {"rope_type": config.rope.rope_type, "rope_theta": config.rope.theta}
    if config.rope.rope_type != "default":
        rope["factor"] = config.rope.factor
    if config.rope.rope_type == "llama3":
        rope.update(low_freq_factor=config.rope.low_freq_factor,
                    high_freq_factor=config.rope.high_freq_factor,
                    original_max_position_embeddings=config.rope.original_max_position_embeddings)
    d = {
        "architectures": [arch],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": rope,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": config.dtype,
    }
    if config.model_type == "llama":
        d["attention_bias"] = config.attention_bias
        d["mlp_bias"] = False
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config, key)
        if value is not None:
            d[key] = list(value) if isinstance(value, tuple) else value
    return d


def base_to_hf_tensors(base: nnx.State, config: ModelConfig) -> dict[str, np.ndarray]:
    """Base state -> `{hf_name: array [out, in]}` in the state's dtype."""
    pure = nnx.to_pure_dict(base)
    out = {"model.embed_tokens.weight": np.asarray(pure["embed_tokens"]),
           "model.norm.weight": np.asarray(pure["norm"]["scale"])}
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = np.asarray(pure["lm_head"]).T
    for i, layer in pure["layers"].items():
        prefix = f"model.layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{prefix}.{norm}.weight"] = np.asarray(layer[norm]["scale"])
        for block in BLOCKS:
            for proj, leaves in layer[block].items():
                out[f"{prefix}.{block}.{proj}.weight"] = np.asarray(leaves["kernel"]).T
                if leaves.get("bias") is not None:
                    out[f"{prefix}.{block}.{proj}.bias"] = np.asarray(leaves["bias"])
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_hf_checkpoint(directory: str | Path, config: ModelConfig, base: nnx.State) -> Path:
    """Writes `config.json` and `model.safetensors` into `directory` (created if needed)."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = base_to_hf_tensors(base, config)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config_dict(config), indent=2))
    return directory
