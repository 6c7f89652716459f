r"""A thin tokenizer wrapper: chat templates, left-padded batches, and GGUF vocabularies.

`Tokenizer` wraps a transformers `PreTrainedTokenizerFast` (no torch involved). It loads from a
local Hugging Face directory, or from a GGUF file: the vocabulary, merges and chat template that
llama.cpp stores as metadata are rebuilt into a `tokenizer.json` with the `tokenizers` library,
written once into a cache directory keyed by a hash of that metadata, and loaded from there.

The rebuild follows transformers' own GGUF conversion (`integrations/gguf/
gguf_tokenizer_mapping.py` in transformers 5), so the ids match `AutoTokenizer.from_pretrained(
..., gguf_file=...)`, which is not used here because it imports torch.

One divergence is inherited on purpose: for `tokenizer.ggml.pre == "smollm"` llama.cpp (like
SmolLM2's own `tokenizer.json`) splits off every digit before GPT-2's pattern, while transformers'
GGUF conversion keeps GPT-2's pattern alone. Ids differ only where whitespace runs meet a digit:
`"\n\n1."` is `Ċ Ċ 1 .` here and `ĊĊ 1 .` in llama.cpp.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer
from transformers import PreTrainedTokenizerFast

from marft_jax.errors import ConfigError
from marft_jax.models.gguf_import import GGUFHeader, read_gguf_header

if TYPE_CHECKING:
    from marft_jax.models.registry import ModelSource

# Bump when the files written for a GGUF tokenizer change, so old cache entries are not reused.
_CACHE_FORMAT = 1
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types

# End-of-turn markers of common chat formats; those in a vocabulary also stop generation.
_END_OF_TURN_TOKENS = (
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
)

# Pre-tokenizer split patterns by `tokenizer.ggml.pre`, as transformers' GGUF conversion has
# them; any other value keeps GPT-2's byte-level pattern (transformers does the same).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
         "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"),
        _LLAMA3_SPLIT,
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}
# Values whose GPT-2 default is what transformers uses without comment.
_DEFAULT_PRE = {None, "default", "gpt2", "smollm"}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def default_cache_dir() -> str:
    """`$MARFT_JAX_CACHE/tokenizers`, or `~/.cache/marft_jax/tokenizers`."""
    root = os.environ.get("MARFT_JAX_CACHE") or os.path.join("~", ".cache", "marft_jax")
    return os.path.join(os.path.expanduser(root), "tokenizers")


def gguf_tokenizer_key(header: GGUFHeader) -> str:
    """The cache key of a GGUF file's tokenizer: a hash of its `tokenizer.*` metadata."""
    metadata = {k: v for k, v in header.metadata.items() if k.startswith("tokenizer.")}
    blob = json.dumps({"format": _CACHE_FORMAT, "metadata": metadata}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def _special(header: GGUFHeader, tokens: Sequence[str], name: str) -> str | None:
    token_id = header.metadata.get(f"tokenizer.ggml.{name}_token_id")
    if token_id is None:
        return None
    if not 0 <= token_id < len(tokens):
        raise ConfigError(
            f"{header.path}: tokenizer.ggml.{name}_token_id={token_id} is out of range"
        )
    return tokens[token_id]


def build_gguf_tokenizer(header: GGUFHeader) -> PreTrainedTokenizerFast:
    """Builds the tokenizer a GGUF file's metadata describes (byte-level BPE only).

    Args:
        header: from `read_gguf_header`.

    Returns:
        A left-padding `PreTrainedTokenizerFast` with the file's special tokens and chat template.

    Raises:
        ConfigError: the file holds no tokenizer, or one that is not byte-level BPE.
    """
    md = header.metadata
    kind = md.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ConfigError(
            f"{header.path}: tokenizer.ggml.model is {kind!r}; only byte-level BPE ('gpt2') GGUF "
            f"tokenizers are supported (use a Hugging Face directory with tokenizer.json instead)"
        )
    tokens, merges = md.get("tokenizer.ggml.tokens"), md.get("tokenizer.ggml.merges")
    if not tokens or not merges:
        raise ConfigError(f"{header.path}: GGUF metadata lacks tokenizer.ggml.tokens or .merges")
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8")): i
        for i, token in enumerate(tokens)
    }
    pairs = [tuple(merge.split(" ")) for merge in merges]
    if any(len(pair) != 2 for pair in pairs):
        raise ConfigError(f"{header.path}: a tokenizer.ggml.merges entry is not 'left right'")
    backend = BackendTokenizer(models.BPE(
        vocab=vocab, merges=pairs, dropout=None, continuing_subword_prefix="",
        end_of_word_suffix="", fuse_unk=False,
    ))
    pre = md.get("tokenizer.ggml.pre")
    split = _PRE_TOKENIZER_SPLITS.get(pre)
    if split is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        if pre not in _DEFAULT_PRE:
            warnings.warn(
                f"{header.path}: unknown tokenizer.ggml.pre {pre!r}; using GPT-2's split",
                stacklevel=2,
            )
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    types = md.get("tokenizer.ggml.token_type") or []
    # Control tokens stay whole and count as special; one spelled outside the byte alphabet is a
    # llama.cpp mislabel and is skipped, as transformers does. User-defined ones are plain.
    backend.add_special_tokens([
        AddedToken(token, normalized=False, special=True)
        for token, token_type in zip(tokens, types, strict=False)
        if token_type == _CONTROL and set(token) <= alphabet
    ])
    backend.add_tokens([
        AddedToken(token, normalized=False, special=False)
        for token, token_type in zip(tokens, types, strict=False)
        if token_type == _USER_DEFINED and token in vocab
    ])
    specials = {
        f"{name}_token": _special(header, tokens, key)
        for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))
    }
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{name: token for name, token in specials.items() if token is not None},
        add_bos_token=bool(md.get("tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(md.get("tokenizer.ggml.add_eos_token", False)),
        chat_template=md.get("tokenizer.chat_template"),
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


# The byte-level tokenizer of the tiny random decoder (`Tokenizer.byte_level`): one id per
# byte, then these specials; a ChatML chat template.
BYTE_LEVEL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one id per byte (0-255) and `BYTE_LEVEL_SPECIALS` (256-258).

    Any text encodes (no unknown token) and ids never merge, so a vocabulary of 259 suffices:
    what the tiny random decoder needs to run text tasks (math, code) in tests and smoke runs.
    """
    spelling = _bytes_to_unicode()
    backend = BackendTokenizer(models.BPE(
        vocab={spelling[b]: b for b in range(256)}, merges=[], dropout=None,
        continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
    ))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t in BYTE_LEVEL_SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=None, eos_token="<|im_end|>",
        pad_token="<|endoftext|>", chat_template=_CHATML_TEMPLATE, padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def _write_gguf_tokenizer(header: GGUFHeader, target: str) -> None:
    """Builds the tokenizer into a temporary directory beside `target`, then renames it."""
    root = os.path.dirname(target)
    try:
        os.makedirs(root, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=root)
    except OSError as err:
        raise ConfigError(
            f"cannot create the tokenizer cache in {root} ({err}); set MARFT_JAX_CACHE"
        ) from None
    try:
        build_gguf_tokenizer(header).save_pretrained(scratch)
        with open(os.path.join(scratch, "source.json"), "w", encoding="utf-8") as handle:
            json.dump({"gguf": os.path.abspath(header.path), "format": _CACHE_FORMAT}, handle)
        os.rename(scratch, target)
    except OSError:
        if not os.path.isdir(target):  # not a lost race with another writer
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _load_directory(directory: str) -> PreTrainedTokenizerFast:
    if not os.path.isfile(os.path.join(directory, "tokenizer.json")):
        raise ConfigError(f"{directory}: no tokenizer.json (a fast tokenizer file is required)")
    return PreTrainedTokenizerFast.from_pretrained(
        directory, padding_side="left", local_files_only=True
    )


class Tokenizer:
    """Encodes, decodes, renders chat prompts and pads batches on the left.

    Construct with `from_pretrained`, `from_gguf` or `from_model_source`.
    """

    def __init__(self, hf_tokenizer: PreTrainedTokenizerFast, source: str):
        """Wraps a loaded transformers tokenizer.

        Args:
            hf_tokenizer: the fast tokenizer; its padding side is set to left.
            source: where it came from, for error messages.

        Raises:
            ConfigError: it has no end-of-sequence token.
        """
        hf_tokenizer.padding_side = "left"
        self._hf = hf_tokenizer
        self.source = source
        if hf_tokenizer.eos_token_id is None:
            raise ConfigError(f"{source}: the tokenizer defines no eos_token")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Tokenizer:
        """Loads `tokenizer.json` (+ `tokenizer_config.json`) from a local directory."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise ConfigError(f"{directory}: not a directory (expected a tokenizer directory)")
        return cls(_load_directory(directory), directory)

    @classmethod
    def from_gguf(
        cls, path: str | os.PathLike, cache_dir: str | os.PathLike | None = None
    ) -> Tokenizer:
        """The tokenizer stored in a GGUF file, built once and cached.

        Args:
            path: a `.gguf` file whose tokenizer is byte-level BPE.
            cache_dir: root of the cache, one subdirectory per tokenizer; defaults to
                `default_cache_dir()`.

        Returns:
            The tokenizer, loaded from `<cache_dir>/<key>/`.

        Raises:
            ConfigError: unreadable file, unsupported tokenizer, or an unwritable cache.
        """
        header = read_gguf_header(path)
        root = os.path.expanduser(os.fspath(cache_dir)) if cache_dir else default_cache_dir()
        target = os.path.join(root, gguf_tokenizer_key(header))
        if not os.path.isfile(os.path.join(target, "tokenizer.json")):
            if os.path.isdir(target):  # damaged by hand: entries are written atomically
                shutil.rmtree(target)
            _write_gguf_tokenizer(header, target)
        return cls(_load_directory(target), os.fspath(path))

    @classmethod
    def byte_level(cls) -> Tokenizer:
        """The byte-level tokenizer (`build_byte_level_tokenizer`) of the tiny random model."""
        return cls(build_byte_level_tokenizer(), "byte-level")

    @classmethod
    def from_model_source(cls, source: ModelSource, cache_dir: str | None = None) -> Tokenizer:
        """The tokenizer of a resolved model (`marft_jax.models.registry.resolve_model`)."""
        if source.kind == "gguf":
            return cls.from_gguf(source.gguf_path, cache_dir=cache_dir)
        return cls.from_pretrained(source.hf_dir)

    @property
    def hf_tokenizer(self) -> PreTrainedTokenizerFast:
        """The wrapped transformers tokenizer."""
        return self._hf

    @property
    def eos_token_id(self) -> int:
        """The end-of-sequence id."""
        return int(self._hf.eos_token_id)

    @property
    def pad_token_id(self) -> int:
        """The padding id; the eos id when the tokenizer names no pad token."""
        pad = self._hf.pad_token_id
        return self.eos_token_id if pad is None else int(pad)

    @property
    def bos_token_id(self) -> int | None:
        """The beginning-of-sequence id, or None."""
        bos = self._hf.bos_token_id
        return None if bos is None else int(bos)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included."""
        return len(self._hf)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end a generation: eos, then end-of-turn markers present in the vocabulary."""
        vocab = self._hf.get_vocab()
        ids = [self.eos_token_id] + [vocab[t] for t in _END_OF_TURN_TOKENS if t in vocab]
        return tuple(dict.fromkeys(ids))

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Id of one token string, or ids of a list of them."""
        return self._hf.convert_tokens_to_ids(tokens)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in it map to their single ids."""
        return self._hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Text of a 1-D id sequence (list or array); no stop-token handling."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"decode expects a 1-D integer sequence, got {ids.dtype} {ids.shape}")
        return self._hf.decode(
            ids.tolist(), skip_special_tokens=skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )

    def chat_prompt_text(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """The chat template rendered as text."""
        if not self._hf.chat_template:
            raise ConfigError(f"{self.source}: the tokenizer has no chat template")
        return self._hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of the rendered chat prompt (the template writes any BOS itself)."""
        text = self.chat_prompt_text(messages, add_generation_prompt=add_generation_prompt)
        return self.encode(text, add_special_tokens=False)

    def batch_encode(
        self, texts_or_id_lists: Sequence[str | Sequence[int] | np.ndarray],
        pad_to: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encodes (or takes) sequences and pads them on the left.

        Args:
            texts_or_id_lists: strings (encoded without special tokens) or id sequences.
            pad_to: the padded length; defaults to the longest sequence.

        Returns:
            `(ids, mask)`, both int32 `[batch, tokens]`; `mask` is 1 on real tokens, 0 on the
            left padding, which holds `pad_token_id`.

        Raises:
            ValueError: an empty batch, a non-1-D id sequence, or `pad_to` shorter than a row.
        """
        if len(texts_or_id_lists) == 0:
            raise ValueError("batch_encode needs at least one sequence")
        rows = []
        for item in texts_or_id_lists:
            row = np.asarray(self.encode(item) if isinstance(item, str) else item, np.int64)
            if row.ndim != 1:
                raise ValueError(f"batch_encode expects 1-D id sequences, got shape {row.shape}")
            rows.append(row)
        longest = max(len(row) for row in rows)
        length = longest if pad_to is None else int(pad_to)
        if length < longest:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({longest})")
        ids = np.full((len(rows), length), self.pad_token_id, np.int32)  # [batch, tokens]
        mask = np.zeros((len(rows), length), np.int32)  # [batch, tokens]
        for i, row in enumerate(rows):
            if len(row):
                ids[i, length - len(row):] = row
                mask[i, length - len(row):] = 1
        return ids, mask

    def __repr__(self) -> str:
        """Source and vocabulary size."""
        return f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size})"
