"""Streaming weight import into the NNX decoder's base state.

Sources yield `(hf_name, numpy array)` pairs one tensor at a time (Hugging Face safetensors
here, GGUF in `gguf_import`); `fill_base_state` maps each name onto the decoder's state path,
casts it to the target dtype and checks names and shapes, so the peak host memory is one
tensor plus the model in its target dtype.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from marft_jax.errors import ConfigError
from marft_jax.models.config import LoraConfig, ModelConfig, config_from_hf_dict, read_hf_config
from marft_jax.models.functional import abstract_model, init_model
from marft_jax.models.projections import BLOCKS

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


def hf_name_to_path(name: str, config: ModelConfig) -> tuple[tuple[Any, ...], bool] | None:
    """Maps a Hugging Face tensor name to `(state path, transpose?)`; None = not used.

    Raises:
        KeyError: for a name that belongs to no known parameter.
    """
    if _IGNORED.search(name):
        return None
    if name == "model.embed_tokens.weight":
        return ("embed_tokens",), False
    if name == "model.norm.weight":
        return ("norm", "scale"), False
    if name == "lm_head.weight":
        return (None if config.tie_word_embeddings else (("lm_head",), True))
    m = _LAYER.match(name)
    if m:
        layer, module, kind = int(m.group(1)), m.group(2), m.group(3)
        if module in ("input_layernorm", "post_attention_layernorm") and kind == "weight":
            return ("layers", layer, module, "scale"), False
        parts = module.split(".")
        if len(parts) == 2 and parts[0] in BLOCKS:
            leaf = "kernel" if kind == "weight" else "bias"
            return ("layers", layer, parts[0], parts[1], leaf), kind == "weight"
    raise KeyError(name)


def iter_safetensors(model_dir: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yields `(name, array)` from `model.safetensors` or a sharded index, one at a time."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    single = model_dir / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{index}: field 'weight_map' is missing or malformed ({e})") from None
        files = sorted(set(weight_map.values()))
    elif single.is_file():
        files = [single.name]
    else:
        raise ConfigError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    for file in files:
        path = model_dir / file
        if not path.is_file():
            raise ConfigError(f"{index}: shard {file!r} listed in 'weight_map' does not exist")
        try:
            with safe_open(str(path), framework="numpy") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except (OSError, ValueError) as e:  # safetensors raises SafetensorError(ValueError-like)
            raise ConfigError(f"{path}: cannot read safetensors file ({e})") from None


def fill_base_state(abstract_base: nnx.State, tensors: Iterable[tuple[str, np.ndarray]],
                    config: ModelConfig, source: str) -> nnx.State:
    """Builds the base state from a stream of HF-named tensors.

    Args:
        abstract_base: base state with `ShapeDtypeStruct` leaves (from `abstract_model`).
        tensors: `(hf_name, array)` pairs in HF `[out, in]` layout.
        config: the model config (dtype, tied embeddings).
        source: checkpoint file or directory named in errors.

    Raises:
        ConfigError: an unknown or duplicated tensor, a wrong shape, or a missing tensor.
    """
    pure = nnx.to_pure_dict(abstract_base)
    filled: set[tuple[Any, ...]] = set()
    for name, array in tensors:
        try:
            target = hf_name_to_path(name, config)
        except KeyError:
            raise ConfigError(f"{source}: tensor {name!r} is not a parameter of a "
                              f"{config.model_type} decoder") from None
        if target is None:
            continue
        path, transpose = target
        node = pure
        try:
            for key in path[:-1]:
                node = node[key]
            expected = node[path[-1]]
        except (KeyError, TypeError):
            raise ConfigError(f"{source}: tensor {name!r} has no place in a model with "
                              f"{config.num_layers} layers") from None
        if transpose:
            array = array.T
        if tuple(array.shape) != tuple(expected.shape):
            raise ConfigError(f"{source}: tensor {name!r} has shape {tuple(array.shape)}, "
                              f"expected {tuple(expected.shape)[::-1] if transpose else tuple(expected.shape)}")
        if path in filled:
            raise ConfigError(f"{source}: tensor {name!r} appears twice")
        node[path[-1]] = jnp.asarray(np.asarray(array), dtype=config.jnp_dtype)
        filled.add(path)
    missing = [p for p, leaf in _flatten(pure) if isinstance(leaf, jax.ShapeDtypeStruct)]
    if missing:
        names = ", ".join(_hf_name(p) for p in missing[:3])
        raise ConfigError(f"{source}: missing tensors for {len(missing)} parameters "
                          f"(first: {names})")
    state = abstract_base
    nnx.replace_by_pure_dict(state, pure)
    return state


def _hf_name(path: tuple[Any, ...]) -> str:
    """The HF tensor name of a base-state path (inverse of `hf_name_to_path`)."""
    if path == ("embed_tokens",):
        return "model.embed_tokens.weight"
    if path == ("lm_head",):
        return "lm_head.weight"
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
    return ".".join(["model", *map(str, path[:-1]), leaf])


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (k,))
    else:
        yield prefix, tree


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A pretrained base with freshly initialised (zero-effect) adapters."""

    config: ModelConfig
    lora_config: LoraConfig | None
    graphdef: Any
    base: nnx.State
    lora: nnx.State
    source: Any  # registry.ModelSource


def load_model(name_or_path: str, *, dtype: str = "float32", lora: LoraConfig | None = None,
               seed: int = 0) -> LoadedModel:
    """Loads a registered name, an HF checkpoint directory or a GGUF file.

    Args:
        name_or_path: e.g. "smollm2-135m-instruct", a directory with config.json, or a .gguf.
        dtype: parameter dtype of the base ("float32" or "bfloat16").
        lora: adapter layout; None for a model without adapters.
        seed: seed of the adapters' initialisation.
    """
    from marft_jax.models import gguf_import
    from marft_jax.models.registry import resolve_model

    source = resolve_model(name_or_path)
    if source.kind == "gguf":
        path = str(source.gguf_path)
        config = config_from_hf_dict(gguf_import.read_gguf_config(path), source=path, dtype=dtype)
        tensors = gguf_import.iter_gguf_tensors(path, dtype=np.float32)
    else:
        path = str(source.hf_dir)
        config = read_hf_config(path, dtype=dtype)
        tensors = iter_safetensors(path)
    graphdef, abstract_base, _ = abstract_model(config, lora)
    base = fill_base_state(abstract_base, tensors, config, path)
    _, _, lora_state = init_model(config, lora, seed, with_base=False)
    return LoadedModel(config, lora, graphdef, base, lora_state, source)
