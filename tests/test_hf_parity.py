"""Logit parity with transformers' PyTorch Llama / Qwen2 on identical random weights."""

import jax.numpy as jnp
import numpy as np
import pytest

from marft_jax.models import functional as F
from marft_jax.models.config import LoraConfig
from marft_jax.models.weights import load_model
from tests.conftest import tiny_hf_model

torch = pytest.importorskip(
    "torch", reason="parity with transformers needs torch (the 'test' extra; CI installs it)")
transformers = pytest.importorskip("transformers")


def _hf_model(model_type: str, tmp_path):
    model = tiny_hf_model(model_type, torch, transformers)
    model.eval()
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_logits_match_transformers(model_type, tmp_path):
    hf = _hf_model(model_type, tmp_path)
    loaded = load_model(str(tmp_path), lora=LoraConfig(num_adapters=2))
    cfg = loaded.config
    assert cfg.model_type == model_type
    assert cfg.attention_bias == (model_type == "qwen2")
    assert cfg.tie_word_embeddings == (model_type == "qwen2")

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (3, 12)).astype(np.int64)
    mask = np.ones_like(tokens)
    mask[1, :3] = 0  # left padding
    mask[2, :7] = 0
    positions = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions)).logits.float().numpy()
    ours = np.asarray(F.sequence_logits(loaded.graphdef, loaded.base, loaded.lora,
                                        jnp.asarray(tokens, jnp.int32), jnp.asarray(mask), 0))
    real = mask.astype(bool)
    diff = float(np.max(np.abs(ours[real] - ref[real])))
    print(f"{model_type}: max |dlogit| = {diff:.2e}")
    assert diff <= 1e-4



@pytest.mark.slow
def test_smollm2_logits_match_transformers_gguf_load(smollm2_ours, smollm2_transformers,
                                                     smollm2_tokenizer):
    """Our GGUF import + decoder against transformers' own GGUF conversion, chat prompts."""
    prompts = ["What is the capital of France?", "Compute 23 + 45. Put the answer in \\boxed{}.",
               "写一首关于春天的短诗。"]
    texts = [smollm2_tokenizer.apply_chat_template([{"role": "user", "content": p}])
             for p in prompts]
    ids, mask = smollm2_tokenizer.batch_encode(texts)
    positions = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    with torch.no_grad():
        ref = smollm2_transformers(input_ids=torch.tensor(ids, dtype=torch.long),
                                   attention_mask=torch.tensor(mask, dtype=torch.long),
                                   position_ids=torch.tensor(positions, dtype=torch.long)
                                   ).logits.float().numpy()
    m = smollm2_ours
    ours = np.asarray(F.sequence_logits(m.graphdef, m.base, m.lora, jnp.asarray(ids),
                                        jnp.asarray(mask), 0))
    real = np.asarray(mask).astype(bool)
    diff = float(np.max(np.abs(ours[real] - ref[real])))
    print(f"smollm2: max |dlogit| = {diff:.2e}")
    assert diff <= 1e-3
    # The greedy next token after the chat prompt agrees too.
    np.testing.assert_array_equal(ours[:, -1].argmax(-1), ref[:, -1].argmax(-1))
