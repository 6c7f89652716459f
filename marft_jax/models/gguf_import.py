"""Reading GGUF files: metadata, a Hugging-Face-style config, and dequantised weights.

A GGUF file (llama.cpp's format) carries a model's hyper-parameters and tokenizer as key/value
metadata and its weights as (often quantised) tensors under llama.cpp's names. This module turns
it into what the Hugging Face safetensors route produces: a `config.json`-style dict and a stream
of `(hf_name, array)` pairs in HF's `[out, in]` layout, so one loader serves both formats.

Only dense Llama and Qwen2 decoders are read. llama.cpp's converter permutes the rows of the
Llama q/k projections (its rotary kernel pairs neighbouring dimensions where HF pairs the two
halves of a head); `iter_gguf_tensors` undoes that. Qwen2 is converted without the permutation
(llama.cpp runs it with the NeoX rotary layout), so its tensors are taken as stored.

The metadata is parsed here by a small scanner rather than by `gguf.GGUFReader`: the reader
builds a numpy view per string and takes seconds on a 49k-token vocabulary, where the scanner
takes a fraction of that. Tensors are still read and dequantised with the `gguf` package.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from marft_jax.errors import ConfigError

GGUF_MAGIC = b"GGUF"

# GGUF value types (gguf.GGUFValueType) -> struct format of a scalar, little-endian.
_SCALAR_FORMATS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}
_NUMPY_DTYPES = {
    0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
    10: "<u8", 11: "<i8", 12: "<f8",
}
_STRING, _ARRAY = 8, 9

SUPPORTED_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(.+)")
_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class GGUFHeader:
    """Everything in a GGUF file before the tensor data.

    Attributes:
        path: the file it was read from.
        version: GGUF format version (2 or 3).
        metadata: key -> value; arrays become lists, strings `str`.
        tensor_shapes: tensor name -> shape in numpy order (GGUF stores it reversed), e.g.
            `token_embd.weight -> (vocab, hidden)`.
        tensor_types: tensor name -> ggml type id (`gguf.GGMLQuantizationType`).
    """

    path: str
    version: int
    metadata: Mapping[str, Any]
    tensor_shapes: Mapping[str, tuple[int, ...]]
    tensor_types: Mapping[str, int]


class _Cursor:
    """Sequential little-endian reads over a buffer."""

    def __init__(self, buffer: mmap.mmap, path: str):
        self.buffer, self.path, self.offset = buffer, path, 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.scalar("<Q")
        end = self.offset + length
        if end > len(self.buffer):
            raise ConfigError(f"{self.path}: truncated GGUF header (string past end of file)")
        raw = self.buffer[self.offset:end]
        self.offset = end
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{self.path}: GGUF string is not UTF-8 ({err})") from None

    def value(self, value_type: int) -> Any:
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if item_type in _NUMPY_DTYPES:
                values = np.frombuffer(self.buffer, _NUMPY_DTYPES[item_type], count, self.offset)
                self.offset += values.nbytes
                result = values.tolist()
                del values  # release the view so the mmap can close
                return result
            return [self.value(item_type) for _ in range(count)]
        if value_type not in _SCALAR_FORMATS:
            raise ConfigError(f"{self.path}: unknown GGUF value type {value_type}")
        return self.scalar(_SCALAR_FORMATS[value_type])


def read_gguf_header(path: str | os.PathLike) -> GGUFHeader:
    """Parses a GGUF file's metadata and tensor table (no tensor data is read).

    Args:
        path: a `.gguf` file.

    Returns:
        The parsed header.

    Raises:
        ConfigError: the file is missing, not a GGUF file, of an unsupported version, or
            truncated.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot open GGUF file ({err})") from None
    with buffer:
        if buffer[:4] != GGUF_MAGIC:
            raise ConfigError(f"{path}: not a GGUF file (starts with {buffer[:4]!r}, not b'GGUF')")
        cursor = _Cursor(buffer, path)
        cursor.offset = 4
        try:
            return _parse_header(cursor)
        except ConfigError:
            raise
        except (struct.error, ValueError, IndexError, OverflowError) as err:
            raise ConfigError(f"{path}: truncated or corrupt GGUF header ({err})") from None


def _parse_header(cursor: _Cursor) -> GGUFHeader:
    version = cursor.scalar("<I")
    if version not in (2, 3):
        hint = " (a big-endian file?)" if version > 0xFFFF else ""
        raise ConfigError(f"{cursor.path}: unsupported GGUF version {version}{hint}; need 2 or 3")
    tensor_count, kv_count = cursor.scalar("<Q"), cursor.scalar("<Q")
    metadata = {}
    for _ in range(kv_count):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.scalar("<I"))
    shapes, types = {}, {}
    for _ in range(tensor_count):
        name = cursor.string()
        n_dims = cursor.scalar("<I")
        dims = [cursor.scalar("<Q") for _ in range(n_dims)]
        types[name] = cursor.scalar("<I")
        cursor.scalar("<Q")  # offset of the data, relative to the data section
        shapes[name] = tuple(reversed(dims))
    return GGUFHeader(cursor.path, version, metadata, shapes, types)


def _architecture(header: GGUFHeader) -> str:
    arch = header.metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"{header.path}: unsupported GGUF architecture {arch!r} (general.architecture); "
            f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    return arch


def _arch_key(header: GGUFHeader, arch: str, name: str, default: Any = _REQUIRED) -> Any:
    """`{arch}.{name}` from the metadata; a per-layer list must hold one value."""
    key = f"{arch}.{name}"
    if key not in header.metadata:
        if default is _REQUIRED:
            raise ConfigError(f"{header.path}: GGUF metadata lacks {key!r}")
        return default
    value = header.metadata[key]
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise ConfigError(f"{header.path}: per-layer {key!r} = {value} is not supported")
        value = value[0]
    return value


def config_from_header(header: GGUFHeader) -> dict[str, Any]:
    """The Hugging-Face-style config dict described by a parsed GGUF header.

    Args:
        header: from `read_gguf_header`.

    Returns:
        A `config.json`-style dict (see `read_gguf_config`).

    Raises:
        ConfigError: unsupported architecture or rotary scheme, or missing metadata.
    """
    arch = _architecture(header)

    def key(name: str, default: Any = _REQUIRED) -> Any:
        return _arch_key(header, arch, name, default)

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", hidden // heads))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise ConfigError(f"{header.path}: key and value head sizes differ; not supported")
    rotary_dim = int(key("rope.dimension_count", head_dim))
    if rotary_dim != head_dim:
        raise ConfigError(
            f"{header.path}: partial rotary embedding ({arch}.rope.dimension_count={rotary_dim}, "
            f"head size {head_dim}) is not supported"
        )
    scaling = key("rope.scaling.type", "none")
    if scaling != "none":
        raise ConfigError(f"{header.path}: RoPE scaling {scaling!r} is not supported")
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    embed_shape = header.tensor_shapes.get("token_embd.weight", (None,))
    vocab = key("vocab_size", len(tokens) if tokens is not None else embed_shape[0])
    if vocab is None:
        raise ConfigError(f"{header.path}: cannot tell the vocabulary size")
    config = {
        "model_type": arch,
        "architectures": [SUPPORTED_ARCHITECTURES[arch]],
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "vocab_size": int(vocab),
        "max_position_embeddings": int(key("context_length")),
        # llama.cpp writes `output.weight` only when it is not the embedding matrix.
        "tie_word_embeddings": "output.weight" not in header.tensor_shapes,
        "rope_parameters": {
            "rope_type": "default", "rope_theta": float(key("rope.freq_base", 10000.0)),
        },
        "attention_bias": arch == "qwen2" or "blk.0.attn_q.bias" in header.tensor_shapes,
    }
    for name in ("bos", "eos", "padding"):
        token_id = header.metadata.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            config[f"{'pad' if name == 'padding' else name}_token_id"] = int(token_id)
    return config


def read_gguf_config(path: str | os.PathLike) -> dict[str, Any]:
    """A Hugging-Face-style `config.json` dict built from a GGUF file's metadata.

    Args:
        path: a `.gguf` file of a Llama or Qwen2 decoder.

    Returns:
        Keys `model_type`, `architectures`, `hidden_size`, `intermediate_size`,
        `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads`, `head_dim`,
        `hidden_act`, `rms_norm_eps`, `vocab_size`, `max_position_embeddings`,
        `tie_word_embeddings`, `rope_parameters`, `attention_bias`, and `bos_token_id`,
        `eos_token_id`, `pad_token_id` where the file has them.

    Raises:
        ConfigError: the file is unreadable or describes an unsupported model.
    """
    return config_from_header(read_gguf_header(path))


def _hf_tensor_name(path: str, name: str, num_layers: int) -> str:
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    match = _LAYER_NAME.fullmatch(name)
    if match is None or match.group(2) not in _LAYER_TENSORS or int(match.group(1)) >= num_layers:
        raise ConfigError(f"{path}: unknown GGUF tensor {name!r}")
    return f"model.layers.{match.group(1)}.{_LAYER_TENSORS[match.group(2)]}"


def unpermute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Inverts llama.cpp's q/k row permutation (`LlamaModel.permute` in convert_hf_to_gguf.py).

    Within each head llama.cpp interleaves the two rotary halves; this puts them back.

    Args:
        weight: `[rows, cols]` weight or `[rows]` bias, rows = n_head * head_dim.
        n_head: heads of this projection (query heads for q, key/value heads for k).

    Returns:
        Same shape, rows reordered.
    """
    rows = weight.shape[0]
    w = weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
    return w.swapaxes(1, 2).reshape(weight.shape)


def iter_gguf_tensors(
    path: str | os.PathLike, dtype: Any = np.float32
) -> Iterator[tuple[str, np.ndarray]]:
    """Streams a GGUF file's weights, dequantised, under Hugging Face names.

    One tensor is dequantised at a time, so peak host memory is one tensor beyond the result.

    Args:
        path: a `.gguf` file of a Llama or Qwen2 decoder.
        dtype: numpy dtype of the yielded arrays.

    Yields:
        `(hf_name, array)`, e.g. `("model.layers.0.self_attn.q_proj.weight", [out, in])`, in
        file order; `lm_head.weight` only when the file has an untied output matrix.

    Raises:
        ConfigError: unsupported architecture, unknown tensor, or a q/k shape that does not
            split into the declared heads.
    """
    import gguf  # deferred: a few hundred milliseconds, and only needed for weights

    path = os.fspath(path)
    config = read_gguf_config(path)
    permute = config["model_type"] == "llama"
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    reader = gguf.GGUFReader(path)
    for tensor in reader.tensors:
        hf_name = _hf_tensor_name(path, tensor.name, config["num_hidden_layers"])
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # numpy order
        weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        projection = hf_name.split(".")[-2]
        if permute and projection in heads:
            n_head = heads[projection]
            if shape[0] % (2 * n_head):
                raise ConfigError(
                    f"{path}: tensor {tensor.name!r} has {shape[0]} rows, not a multiple of "
                    f"2 x {n_head} heads"
                )
            weight = unpermute_rows(weight, n_head)
        yield hf_name, np.array(weight, dtype=dtype, copy=True)
