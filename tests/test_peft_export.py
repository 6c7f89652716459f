"""PEFT adapter export / import and merged checkpoints, checked against transformers + peft."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from marft_jax.errors import ConfigError
from marft_jax.models import functional as F
from marft_jax.models import peft_export as P
from marft_jax.models.config import LORA_TARGETS, LoraConfig
from marft_jax.models.layers import BASE_ADAPTER
from marft_jax.models.weights import load_model
from tests.conftest import tiny_config, tiny_hf_model

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # raised inside peft

QV = ("q_proj", "v_proj")
CASES = {"qwen2": QV, "llama": LORA_TARGETS}  # llama: every projection, beyond the default


def _stack():
    torch = pytest.importorskip(
        "torch", reason="parity with transformers + peft needs torch (the 'test' extra)")
    transformers = pytest.importorskip("transformers", reason="needs transformers")
    peft = pytest.importorskip("peft", reason="parity with PEFT needs peft (the 'test' extra)")
    return torch, transformers, peft


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """`{model_type: directory}` of random tiny transformers checkpoints."""
    torch, transformers, _ = _stack()
    out = {}
    for model_type in CASES:
        directory = tmp_path_factory.mktemp(model_type)
        tiny_hf_model(model_type, torch, transformers).save_pretrained(directory)
        out[model_type] = directory
    return out


def _randomize(lora_state, seed):
    """Every LoRA leaf (all adapters) random and non-zero."""
    leaves, treedef = jax.tree.flatten(lora_state)
    rng = np.random.default_rng(seed)
    new = [jnp.asarray(rng.normal(0.0, 0.2, x.shape), x.dtype) for x in leaves]
    return jax.tree.unflatten(treedef, new)


def _ours(directory, targets, seed=1):
    lora_config = LoraConfig(num_adapters=2, rank=4, alpha=8.0, targets=targets)
    m = load_model(str(directory), lora=lora_config)
    return m.config, lora_config, m.graphdef, m.base, _randomize(m.lora, seed)


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (3, 12)).astype(np.int64)
    mask = np.ones_like(tokens)
    mask[1, :3] = 0  # left padding
    mask[2, :7] = 0
    return tokens, mask


def _our_logits(graphdef, base, lora, adapter):
    tokens, mask = _batch()
    logits = F.sequence_logits(graphdef, base, lora, jnp.asarray(tokens, jnp.int32),
                               jnp.asarray(mask), adapter)
    return np.asarray(logits)[mask.astype(bool)]


def _hf_logits(torch, model):
    tokens, mask = _batch()
    positions = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions)).logits.float().numpy()
    return out[mask.astype(bool)]


def _fresh_hf(transformers, torch, directory):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)


@pytest.mark.parametrize("model_type", list(CASES))
def test_exported_adapter_matches_peft(model_type, checkpoints, tmp_path):
    torch, transformers, peft = _stack()
    config, lora_config, graphdef, base, lora = _ours(checkpoints[model_type], CASES[model_type])
    adapter_dir = P.save_peft_adapter(tmp_path / "adapter", config, lora_config, lora, 1,
                                      base_model_name_or_path="tiny")
    hf = _fresh_hf(transformers, torch, checkpoints[model_type])
    ref = _hf_logits(torch, peft.PeftModel.from_pretrained(hf, adapter_dir))
    ours = _our_logits(graphdef, base, lora, 1)
    diff = float(np.max(np.abs(ours - ref)))
    print(f"{model_type} {len(CASES[model_type])} targets: peft max |dlogit| = {diff:.2e}")
    assert diff <= 1e-3
    # The comparison has teeth: the other adapter and the bare base give other logits.
    assert np.max(np.abs(_our_logits(graphdef, base, lora, 0) - ref)) > 1e-2
    assert np.max(np.abs(_our_logits(graphdef, base, lora, BASE_ADAPTER) - ref)) > 1e-2

    # Same file layout as peft's own save_pretrained for the same LoRA config.
    reference = peft.get_peft_model(_fresh_hf(transformers, torch, checkpoints[model_type]),
                                     peft.LoraConfig(r=4, lora_alpha=8,
                                                     target_modules=list(CASES[model_type]),
                                                     task_type="CAUSAL_LM"))
    reference.save_pretrained(tmp_path / "reference")
    mine = load_file(str(adapter_dir / P.WEIGHTS_NAME))
    theirs = load_file(str(tmp_path / "reference" / P.WEIGHTS_NAME))
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in theirs.items()}
    mine_cfg = json.loads((adapter_dir / P.CONFIG_NAME).read_text())
    theirs_cfg = json.loads((tmp_path / "reference" / P.CONFIG_NAME).read_text())
    for key in ("peft_type", "task_type", "r", "lora_alpha", "target_modules", "lora_dropout",
                "bias", "fan_in_fan_out", "inference_mode", "use_rslora", "use_dora"):
        same = (sorted(mine_cfg[key]) == sorted(theirs_cfg[key]) if key == "target_modules"
                else mine_cfg[key] == theirs_cfg[key])  # peft writes its target set unordered
        assert same, key
    assert mine_cfg["base_model_name_or_path"] == "tiny"


@pytest.mark.parametrize("model_type", list(CASES))
def test_merged_checkpoint_matches_adapter(model_type, checkpoints, tmp_path):
    torch, transformers, _ = _stack()
    from tokenizers import Tokenizer as BackendTokenizer
    from tokenizers import models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from marft_jax.tokenizer import Tokenizer

    config, lora_config, graphdef, base, lora = _ours(checkpoints[model_type], CASES[model_type])
    backend = BackendTokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "hi": 2},
                                                unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = Tokenizer(PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>"), "t")
    merged_dir = P.save_merged_checkpoint(tmp_path / "merged", config, lora_config, base, lora,
                                          1, tokenizer=tok)
    ours = _our_logits(graphdef, base, lora, 1)
    plain = _hf_logits(torch, _fresh_hf(transformers, torch, merged_dir))
    diff_hf = float(np.max(np.abs(ours - plain)))
    reloaded = load_model(str(merged_dir))
    mine = _our_logits(reloaded.graphdef, reloaded.base, reloaded.lora, BASE_ADAPTER)
    diff_ours = float(np.max(np.abs(ours - mine)))
    print(f"{model_type}: merged transformers max |dlogit| = {diff_hf:.2e}, "
          f"merged load_model = {diff_ours:.2e}")
    assert diff_hf <= 1e-3 and diff_ours <= 1e-3
    assert np.max(np.abs(_our_logits(graphdef, base, lora, BASE_ADAPTER) - plain)) > 1e-2
    assert Tokenizer.from_pretrained(merged_dir).encode("hi hi") == [2, 2]
    # The base state passed in is untouched.
    assert np.max(np.abs(_our_logits(graphdef, base, lora, BASE_ADAPTER) - mine)) > 1e-2


@pytest.mark.parametrize("alpha,rslora,targets", [(8, False, QV), (16, True, ("q_proj",))])
def test_load_adapter_written_by_peft(alpha, rslora, targets, checkpoints, tmp_path):
    """Another alpha / rsLoRA is folded into B; a target the adapter lacks gets B = 0."""
    torch, transformers, peft = _stack()
    config, lora_config, graphdef, base, lora = _ours(checkpoints["qwen2"], QV)
    torch.manual_seed(3)
    model = peft.get_peft_model(
        _fresh_hf(transformers, torch, checkpoints["qwen2"]),
        peft.LoraConfig(r=4, lora_alpha=alpha, use_rslora=rslora, target_modules=list(targets),
                        init_lora_weights=False, task_type="CAUSAL_LM"))  # random A and B
    model.save_pretrained(tmp_path / "peft")
    ref = _hf_logits(torch, model)
    loaded = P.load_peft_adapter(tmp_path / "peft", config, lora_config, lora, 1)
    diff = float(np.max(np.abs(_our_logits(graphdef, base, loaded, 1) - ref)))
    print(f"peft-written adapter (alpha={alpha}, rslora={rslora}): max |dlogit| = {diff:.2e}")
    assert diff <= 1e-3
    assert np.max(np.abs(_our_logits(graphdef, base, loaded, 0) - ref)) > 1e-2
    before, after = nnx.to_pure_dict(lora), nnx.to_pure_dict(loaded)
    for layer in range(config.num_layers):
        for proj in QV:
            for leaf in ("lora_a", "lora_b"):
                old = np.asarray(before["layers"][layer]["self_attn"][proj][leaf])
                new = np.asarray(after["layers"][layer]["self_attn"][proj][leaf])
                np.testing.assert_array_equal(new[0], old[0])  # the other slot is untouched
        if "v_proj" not in targets:  # a target the adapter lacks adds nothing in its slot
            v_b = np.asarray(after["layers"][layer]["self_attn"]["v_proj"]["lora_b"])
            assert not np.any(v_b[1])


@functools.lru_cache(maxsize=None)  # states are immutable: build (and compile) each once
def _tiny_state(seed, targets=QV, model_type="qwen2"):
    config = tiny_config(model_type)
    lora_config = LoraConfig(num_adapters=2, rank=4, alpha=8.0, targets=targets)
    _, _, lora = F.init_model(config, lora_config, with_base=False)
    return config, lora_config, _randomize(lora, seed)


def test_round_trip_is_bitwise_and_per_role_layout(tmp_path):
    config, lora_config, lora = _tiny_state(1, targets=("k_proj", "o_proj", "up_proj"))
    _, _, other = _tiny_state(2, targets=("k_proj", "o_proj", "up_proj"))
    dirs = P.save_peft_adapters(tmp_path / "step_10", config, lora_config, lora,
                                ["reasoner", "actor"])
    assert [d.name for d in dirs] == ["reasoner", "actor"]
    assert sorted(os.listdir(tmp_path / "step_10")) == ["actor", "reasoner"]
    back = P.load_peft_adapter(tmp_path / "step_10" / "actor", config, lora_config, other, 0)
    src, dst, orig = (jax.tree.leaves(nnx.to_pure_dict(s)) for s in (lora, back, other))
    for s, d, o in zip(src, dst, orig):
        np.testing.assert_array_equal(np.asarray(d[0]), np.asarray(s[1]))  # bitwise
        np.testing.assert_array_equal(np.asarray(d[1]), np.asarray(o[1]))
    # `other` itself was not modified.
    assert not np.array_equal(np.asarray(orig[0][0]), np.asarray(src[0][1]))


def _exported(tmp_path):
    config, lora_config, lora = _tiny_state(1)
    directory = P.save_peft_adapter(tmp_path / "a", config, lora_config, lora, 1)
    return directory, config, lora_config, lora


def _edit_config(**changes):
    def edit(directory):
        path = directory / P.CONFIG_NAME
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return edit


def _edit_tensors(fn):
    def edit(directory):
        path = str(directory / P.WEIGHTS_NAME)
        tensors = load_file(path)
        fn(tensors)
        save_file(tensors, path)
    return edit


KEY = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
BAD = {
    "rank": (_edit_config(r=8), r"adapter_config.json: field 'r' is 8"),
    "no_weights": (lambda d: os.remove(d / P.WEIGHTS_NAME),
                   r"adapter_model.safetensors: file not found"),
    "no_config": (lambda d: os.remove(d / P.CONFIG_NAME), r"adapter_config.json: file not found"),
    "target_not_ours": (_edit_config(target_modules=["q_proj", "k_proj", "v_proj"]),
                        r"adapter_config.json: field 'target_modules' adapts \['k_proj'\]"),
    "unknown_target": (_edit_config(target_modules=["q_proj", "c_attn"]),
                       r"adapter_config.json: field 'target_modules' names 'c_attn'"),
    "lm_head": (_edit_config(target_modules=["q_proj", "lm_head"]),
                r"adapter_config.json: field 'target_modules' adapts \['lm_head'\]"),
    "some_layers": (_edit_config(target_modules=r"model\.layers\.0\.self_attn\.(q|v)_proj"),
                    r"adapter_config.json: field 'target_modules' adapts \w_proj on only some"),
    "dora": (_edit_config(use_dora=True), r"adapter_config.json: field 'use_dora'"),
    "not_lora": (_edit_config(peft_type="IA3"), r"adapter_config.json: field 'peft_type'"),
    "missing_key": (_edit_tensors(lambda t: t.pop(KEY)),
                    rf"adapter_model.safetensors: tensor '{KEY}' is missing"),
    "shape": (_edit_tensors(lambda t: t.update({KEY: np.zeros((4, 4), np.float32)})),
              rf"adapter_model.safetensors: tensor '{KEY}' has shape \(4, 4\), expected "
              r"\(32, 4\)"),
    "extra_key": (_edit_tensors(lambda t: t.update({"lm_head.weight": np.zeros(2, np.float32)})),
                  r"adapter_model.safetensors: tensor 'lm_head.weight' is not a LoRA weight"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_adapter_is_a_config_error(case, tmp_path):
    directory, config, lora_config, lora = _exported(tmp_path)
    edit, pattern = BAD[case]
    P.load_peft_adapter(directory, config, lora_config, lora, 0)  # fine before the edit
    edit(directory)
    with pytest.raises(ConfigError, match=pattern):
        P.load_peft_adapter(directory, config, lora_config, lora, 0)


def test_regex_and_all_linear_targets_resolve(tmp_path):
    directory, config, lora_config, lora = _exported(tmp_path)
    _edit_config(target_modules=r".*\.(q|v)_proj")(directory)
    P.load_peft_adapter(directory, config, lora_config, lora, 0)
    _edit_config(target_modules="all-linear")(directory)
    with pytest.raises(ConfigError, match="field 'target_modules' adapts"):
        P.load_peft_adapter(directory, config, lora_config, lora, 0)


def test_bad_arguments(tmp_path):
    config, lora_config, lora = _tiny_state(1)
    with pytest.raises(ConfigError, match="field 'adapter_index' is 2"):
        P.save_peft_adapter(tmp_path / "x", config, lora_config, lora, 2)
    with pytest.raises(ConfigError, match="field 'names' has 1 entries for 2 adapters"):
        P.save_peft_adapters(tmp_path / "x", config, lora_config, lora, ["a"])
    with pytest.raises(ConfigError, match="field 'names' repeats"):
        P.save_peft_adapters(tmp_path / "x", config, lora_config, lora, ["a", "a"])
    with pytest.raises(ConfigError, match="not a folder name"):
        P.save_peft_adapters(tmp_path / "x", config, lora_config, lora, ["a", "../b"])
    wrong = LoraConfig(num_adapters=2, rank=4, alpha=8.0, targets=("k_proj",))
    with pytest.raises(ConfigError, match="no adapter on layer 0 k_proj"):
        P.save_peft_adapter(tmp_path / "x", config, wrong, lora, 0)
    assert not (tmp_path / "x").exists()


def test_writes_are_atomic(tmp_path, monkeypatch):
    import safetensors.numpy

    config, lora_config, lora = _tiny_state(1)
    target = P.save_peft_adapter(tmp_path / "a", config, lora_config, lora, 0)
    first = load_file(str(target / P.WEIGHTS_NAME))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        P.save_peft_adapter(target, config, lora_config, lora, 1)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["a"]  # no scratch directory left behind
    kept = load_file(str(target / P.WEIGHTS_NAME))
    assert all(np.array_equal(kept[k], first[k]) for k in first)
    P.save_peft_adapter(target, config, lora_config, lora, 1)  # a later export replaces it
    replaced = load_file(str(target / P.WEIGHTS_NAME))
    assert not np.array_equal(replaced[KEY], first[KEY])
    assert sorted(os.listdir(tmp_path)) == ["a"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds no adapter_config.json; refusing"):
        P.save_peft_adapter(tmp_path / "notes", config, lora_config, lora, 0)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_library_path_does_not_import_torch_or_peft(tmp_path):
    script = (
        "import sys\n"
        "from tests.conftest import tiny_config\n"
        "from marft_jax.models import functional as F, peft_export as P\n"
        "from marft_jax.models.config import LoraConfig\n"
        "c, lc = tiny_config('llama'), LoraConfig(num_adapters=2, rank=4, alpha=8.0)\n"
        "g, base, lora = F.init_model(c, lc)\n"
        f"d = P.save_peft_adapter({str(tmp_path / 'a')!r}, c, lc, lora, 1)\n"
        "P.load_peft_adapter(d, c, lc, lora, 0)\n"
        f"P.save_merged_checkpoint({str(tmp_path / 'm')!r}, c, lc, base, lora, 1)\n"
        "bad = [m for m in ('torch', 'peft') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False, cwd=repo, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
