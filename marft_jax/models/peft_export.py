"""LoRA adapters to and from Hugging Face PEFT, and adapters merged into plain checkpoints.

An adapter directory in PEFT's format holds `adapter_config.json` and
`adapter_model.safetensors` with tensors named like
`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` (`[rank, in]`) and
`...lora_B.weight` (`[out, rank]`). Our stacked state keeps `lora_a [adapters, in, rank]` and
`lora_b [adapters, rank, out]`, so export is a slice and a transpose; both sides compute
`y = x W + scale * (x A) B` with `scale = lora_alpha / r`.

Every directory is written atomically: into a temporary sibling, then renamed into place, so
an interrupted export leaves either the previous directory or nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from marft_jax.errors import ConfigError
from marft_jax.jsonfile import read_json
from marft_jax.models.config import LORA_TARGETS, LoraConfig, ModelConfig
from marft_jax.models.projections import block_of
from marft_jax.models.hf_export import save_hf_checkpoint

if TYPE_CHECKING:
    from marft_jax.tokenizer import Tokenizer

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model.model.layers"
# PEFT features that change what an adapter computes and that a stacked LoRA cannot hold.
_UNSUPPORTED = ("use_dora", "lora_bias", "fan_in_fan_out", "modules_to_save",
                "layers_to_transform", "exclude_modules", "rank_pattern", "alpha_pattern",
                "target_parameters", "trainable_token_indices", "layer_replication",
                "use_qalora", "use_bdlora", "arrow_config", "kasa_config", "monteclora_config",
                "alora_invocation_tokens")


def _module_name(layer: int, proj: str) -> str:
    """The transformers module name of one projection, e.g. `model.layers.0.mlp.up_proj`."""
    return f"model.layers.{layer}.{block_of(proj)}.{proj}"


def _peft_key(layer: int, proj: str, which: str) -> str:
    """PEFT's saved tensor name; `which` is "A" or "B"."""
    return f"{_PREFIX}.{layer}.{block_of(proj)}.{proj}.lora_{which}.weight"


def _check_index(lora_config: LoraConfig, adapter_index: int) -> None:
    if not 0 <= adapter_index < lora_config.num_adapters:
        raise ConfigError(f"lora config: field 'adapter_index' is {adapter_index}; the state "
                          f"holds adapters 0..{lora_config.num_adapters - 1}")


def _lora_leaves(pure: dict, layer: int, proj: str) -> dict:
    """The `{"lora_a", "lora_b"}` dict of one projection in a pure LoRA state."""
    try:
        leaves = pure["layers"][layer][block_of(proj)][proj]
    except (KeyError, TypeError):
        leaves = None
    if not isinstance(leaves, dict) or not {"lora_a", "lora_b"} <= set(leaves):
        raise ConfigError(f"lora state: no adapter on layer {layer} {proj}; does the lora "
                          "config's 'targets' match the model's?")
    return leaves


@contextlib.contextmanager
def _atomic_directory(directory: str | Path, marker: str) -> Iterator[Path]:
    """Yields a scratch directory that replaces `directory` once the block succeeds.

    An existing `directory` is replaced only if it is empty or holds `marker` (a previous
    export), so a mistyped path never wipes unrelated files.
    """
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise ConfigError(f"{directory}: exists and is not a directory")
        if any(directory.iterdir()) and not (directory / marker).exists():
            raise ConfigError(f"{directory}: not empty and holds no {marker}; refusing to "
                              "replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield scratch
        os.chmod(scratch, 0o755)
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(directory, old)
            os.rename(scratch, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(scratch, directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def peft_config_dict(lora_config: LoraConfig,
                     base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The `adapter_config.json` dict PEFT 0.21 reads for one of our adapters."""
    alpha = lora_config.alpha
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": lora_config.rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else float(alpha),
        "target_modules": sorted(lora_config.targets),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def adapter_tensors(config: ModelConfig, lora_config: LoraConfig, lora_state: nnx.State,
                    adapter_index: int) -> dict[str, np.ndarray]:
    """One adapter of the stacked state as `{peft_key: array}` (A `[r, in]`, B `[out, r]`)."""
    _check_index(lora_config, adapter_index)
    pure = nnx.to_pure_dict(lora_state)
    out = {}
    for layer in range(config.num_layers):
        for proj in lora_config.targets:
            leaves = _lora_leaves(pure, layer, proj)
            a = np.asarray(leaves["lora_a"][adapter_index])  # [in, rank]
            b = np.asarray(leaves["lora_b"][adapter_index])  # [rank, out]
            out[_peft_key(layer, proj, "A")] = np.ascontiguousarray(a.T)
            out[_peft_key(layer, proj, "B")] = np.ascontiguousarray(b.T)
    return out


def save_peft_adapter(directory: str | Path, config: ModelConfig, lora_config: LoraConfig,
                      lora_state: nnx.State, adapter_index: int, *,
                      base_model_name_or_path: str | None = None) -> Path:
    """Writes adapter `adapter_index` as a PEFT LoRA adapter directory.

    The result loads with `peft.PeftModel.from_pretrained(base_model, directory)`.

    Args:
        directory: target directory (replaced if it holds a previous adapter export).
        config: the base model's config.
        lora_config: layout of the stacked adapters.
        lora_state: the stacked LoRA state (from `split_model` / `load_model`).
        adapter_index: which adapter to write.
        base_model_name_or_path: recorded in `adapter_config.json` for PEFT's auto-loading.

    Returns:
        The directory written.
    """
    from safetensors.numpy import save_file

    tensors = adapter_tensors(config, lora_config, lora_state, adapter_index)
    with _atomic_directory(directory, CONFIG_NAME) as scratch:
        save_file(tensors, str(scratch / WEIGHTS_NAME), metadata={"format": "pt"})
        text = json.dumps(peft_config_dict(lora_config, base_model_name_or_path), indent=2)
        (scratch / CONFIG_NAME).write_text(text + "\n")
    return Path(directory)


def save_peft_adapters(directory: str | Path, config: ModelConfig, lora_config: LoraConfig,
                       lora_state: nnx.State, names: Sequence[str], *,
                       base_model_name_or_path: str | None = None) -> list[Path]:
    """Writes every adapter as `<directory>/<names[i]>/` (the reference's per-role layout).

    Each sub-folder is written atomically on its own.

    Raises:
        ConfigError: `names` does not give one distinct, plain folder name per adapter.
    """
    names = list(names)
    if len(names) != lora_config.num_adapters:
        raise ConfigError(f"lora export: field 'names' has {len(names)} entries for "
                          f"{lora_config.num_adapters} adapters")
    for name in names:
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise ConfigError(f"lora export: field 'names' has {name!r}, not a folder name")
    if len(set(names)) != len(names):
        raise ConfigError(f"lora export: field 'names' repeats a name ({names})")
    return [save_peft_adapter(Path(directory) / name, config, lora_config, lora_state, i,
                              base_model_name_or_path=base_model_name_or_path)
            for i, name in enumerate(names)]


def _read_peft_config(path: Path) -> dict[str, Any]:
    d = read_json(path, f"a PEFT adapter needs {CONFIG_NAME}")
    if d.get("peft_type") != "LORA":
        raise ConfigError(f"{path}: field 'peft_type' is {d.get('peft_type')!r}, not 'LORA'")
    for field in _UNSUPPORTED:
        if d.get(field):
            raise ConfigError(f"{path}: field {field!r} is {d[field]!r}; only plain LoRA on "
                              "whole projections can be loaded")
    if d.get("bias", "none") != "none":
        raise ConfigError(f"{path}: field 'bias' is {d['bias']!r}; only 'none' is supported")
    return d


def _peft_targets(d: dict[str, Any], config: ModelConfig, path: Path) -> set[str]:
    """Projections named by `target_modules`, matched the way PEFT matches module names."""
    value = d.get("target_modules")
    modules = {_module_name(i, p): p for i in range(config.num_layers) for p in LORA_TARGETS}
    others = ("lm_head", "model.embed_tokens")
    if value == "all-linear":
        return set(LORA_TARGETS)
    if isinstance(value, str):
        try:
            hits = {name for name in (*modules, *others) if re.fullmatch(value, name)}
        except re.error as e:
            raise ConfigError(f"{path}: field 'target_modules' is a bad regex ({e})") from None
    elif isinstance(value, list) and value and all(isinstance(t, str) for t in value):
        hits = set()
        for target in value:
            found = {n for n in (*modules, *others) if n == target or n.endswith("." + target)}
            if not found:
                raise ConfigError(f"{path}: field 'target_modules' names {target!r}, which is "
                                  f"no projection of a {config.model_type} decoder")
            hits |= found
    else:
        raise ConfigError(f"{path}: field 'target_modules' must be a non-empty list of "
                          f"module names or a regex (got {value!r})")
    if hits & set(others):
        raise ConfigError(f"{path}: field 'target_modules' adapts {sorted(hits & set(others))}; "
                          f"only {list(LORA_TARGETS)} are supported")
    projs = {modules[n] for n in hits}
    for proj in projs:
        if sum(modules[n] == proj for n in hits) != config.num_layers:
            raise ConfigError(f"{path}: field 'target_modules' adapts {proj} on only some "
                              "layers; only adapters on every layer are supported")
    if not projs:
        raise ConfigError(f"{path}: field 'target_modules' matches no projection")
    return projs


def load_peft_adapter(directory: str | Path, config: ModelConfig, lora_config: LoraConfig,
                      lora_state: nnx.State, adapter_index: int) -> nnx.State:
    """Reads a PEFT LoRA adapter into slot `adapter_index` of the stacked state.

    The inverse of `save_peft_adapter` (bitwise when the scales agree). An adapter trained
    with another `lora_alpha` (or rsLoRA) is brought in exactly by folding the ratio of the
    two scales into B. Projections in `lora_config.targets` that the adapter does not touch
    get B = 0 in this slot, so they add nothing. Other slots are left as they are.

    Args:
        directory: holds `adapter_config.json` and `adapter_model.safetensors`.
        config: the base model's config.
        lora_config: layout of the stacked state.
        lora_state: the stacked LoRA state; not modified.
        adapter_index: the slot to fill.

    Returns:
        A new LoRA state.

    Raises:
        ConfigError: naming the file and field or tensor: a rank other than
            `lora_config.rank`, a target the state has no adapter on, a missing, extra or
            misshapen tensor, or an unsupported PEFT feature.
    """
    from safetensors import safe_open

    _check_index(lora_config, adapter_index)
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    d = _read_peft_config(config_path)
    if d.get("r") != lora_config.rank:
        raise ConfigError(f"{config_path}: field 'r' is {d.get('r')!r}; the LoRA state has "
                          f"rank {lora_config.rank}")
    alpha = d.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise ConfigError(f"{config_path}: field 'lora_alpha' is {alpha!r}, not a positive "
                          "number")
    targets = _peft_targets(d, config, config_path)
    foreign = sorted(targets - set(lora_config.targets))
    if foreign:
        raise ConfigError(f"{config_path}: field 'target_modules' adapts {foreign}, "
                          f"but the LoRA state only has {list(lora_config.targets)}")
    peft_scale = alpha / (np.sqrt(d["r"]) if d.get("use_rslora") else d["r"])
    ratio = float(peft_scale / lora_config.scale)
    if not weights_path.is_file():
        raise ConfigError(f"{weights_path}: file not found (a PEFT adapter needs "
                          f"{WEIGHTS_NAME})")
    try:
        with safe_open(str(weights_path), framework="numpy") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (OSError, ValueError) as e:
        raise ConfigError(f"{weights_path}: cannot read safetensors file ({e})") from None

    pure = nnx.to_pure_dict(lora_state)
    expected = set()
    for layer in range(config.num_layers):
        for proj in lora_config.targets:
            leaves = _lora_leaves(pure, layer, proj)
            a_all, b_all = leaves["lora_a"], leaves["lora_b"]  # [n, in, r], [n, r, out]
            if proj not in targets:
                leaves["lora_b"] = b_all.at[adapter_index].set(0)
                continue
            new = {}
            for which, stacked in (("A", a_all), ("B", b_all)):
                key = _peft_key(layer, proj, which)
                expected.add(key)
                if key not in tensors:
                    raise ConfigError(f"{weights_path}: tensor {key!r} is missing")
                shape = tuple(stacked.shape[1:][::-1])
                if tuple(tensors[key].shape) != shape:
                    raise ConfigError(f"{weights_path}: tensor {key!r} has shape "
                                      f"{tuple(tensors[key].shape)}, expected {shape}")
                value = np.asarray(tensors[key]).astype(np.float32).T
                if which == "B" and ratio != 1.0:
                    value = value * np.float32(ratio)
                new[which] = stacked.at[adapter_index].set(jnp.asarray(value, stacked.dtype))
            leaves["lora_a"], leaves["lora_b"] = new["A"], new["B"]
    extra = sorted(set(tensors) - expected)
    if extra:
        raise ConfigError(f"{weights_path}: tensor {extra[0]!r} is not a LoRA weight of the "
                          f"targets {list(lora_config.targets)} ({len(extra)} unexpected)")
    state = jax.tree.map(lambda x: x, lora_state)  # a copy; the caller's state stays intact
    nnx.replace_by_pure_dict(state, pure)
    return state


def merge_adapter(config: ModelConfig, lora_config: LoraConfig, base: nnx.State,
                  lora_state: nnx.State, adapter_index: int) -> nnx.State:
    """A new base state with adapter `adapter_index` folded in: `W + scale * A B`.

    The sum is taken in float32 and cast back to the base's dtype.
    """
    _check_index(lora_config, adapter_index)
    lora_pure = nnx.to_pure_dict(lora_state)
    pure = nnx.to_pure_dict(base)
    for layer in range(config.num_layers):
        for proj in lora_config.targets:
            leaves = _lora_leaves(lora_pure, layer, proj)
            a = leaves["lora_a"][adapter_index].astype(jnp.float32)  # [in, rank]
            b = leaves["lora_b"][adapter_index].astype(jnp.float32)  # [rank, out]
            target = pure["layers"][layer][block_of(proj)][proj]
            kernel = target["kernel"]  # [in, out]
            merged = kernel.astype(jnp.float32) + lora_config.scale * (a @ b)
            target["kernel"] = merged.astype(kernel.dtype)
    merged_base = jax.tree.map(lambda x: x, base)
    nnx.replace_by_pure_dict(merged_base, pure)
    return merged_base


def save_merged_checkpoint(directory: str | Path, config: ModelConfig, lora_config: LoraConfig,
                           base: nnx.State, lora_state: nnx.State, adapter_index: int, *,
                           tokenizer: Tokenizer | None = None) -> Path:
    """Writes a plain Hugging Face checkpoint of the base with one adapter merged in.

    Loads with `transformers.AutoModelForCausalLM.from_pretrained(directory)` (no PEFT) and
    with `marft_jax.models.weights.load_model(directory)`.

    Args:
        directory: target directory; an existing one is replaced only if it is empty or
            holds a `config.json` (so never point it at the base checkpoint itself).
        config, lora_config, base, lora_state: the model and its stacked adapters.
        adapter_index: the adapter to merge.
        tokenizer: if given, its files are written beside the weights.
    """
    merged = merge_adapter(config, lora_config, base, lora_state, adapter_index)
    with _atomic_directory(directory, "config.json") as scratch:
        save_hf_checkpoint(scratch, config, merged)
        if tokenizer is not None:
            tokenizer.hf_tokenizer.save_pretrained(str(scratch))
    return Path(directory)
