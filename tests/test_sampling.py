"""Generation engine: parity with transformers, log-probs, adapters, buckets, stopping."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marft_jax.models import functional as F
from marft_jax.models.config import LoraConfig
from marft_jax.models.layers import BASE_ADAPTER
from marft_jax.sampling import (Generation, Sampler, SamplerConfig, argmax, draw, generate,
                                sample_logprobs)
from tests.conftest import tiny_config, tiny_hf_model

N = 10  # max_new_tokens of most tests
# Most tests share this config and 3 x 6 prompts, so they share one compilation.
DEFAULT = SamplerConfig(max_new_tokens=N, pad_token_id=0)


@functools.lru_cache(maxsize=None)
def _jitted():
    return jax.jit(generate, static_argnums=0, static_argnames="config")


def _gen(model, tokens, mask, ids, key, temps, max_new, config):
    graphdef, base, lora = model
    return _jitted()(graphdef, base, lora, jnp.asarray(tokens), jnp.asarray(mask),
                     jnp.asarray(ids, jnp.int32), key, jnp.asarray(temps, jnp.float32),
                     jnp.asarray(max_new, jnp.int32), config=config)


def _random_lora(lora, seed=1, scale=0.3):
    leaves, treedef = jax.tree_util.tree_flatten(lora)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


@pytest.fixture(scope="module")
def model():
    """Tiny llama with three trained (non-zero) adapters."""
    graphdef, base, lora = F.init_model(tiny_config("llama"),
                                        LoraConfig(num_adapters=3, rank=4, alpha=8.0), seed=0)
    return graphdef, base, _random_lora(lora)


def _prompts(batch=4, length=7, seed=0, vocab=256):
    """Left-padded prompts with different lengths (row r has r padding tokens, capped)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), bool)
    for row in range(batch):
        pad = min(row, length - 1)
        tokens[row, :pad] = 0
        mask[row, :pad] = False
    return tokens, mask


def _assert_generation_equal(a: Generation, b: Generation, atol=1e-5):
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
    np.testing.assert_array_equal(np.asarray(a.lengths), np.asarray(b.lengths))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=atol)
    if a.policy_logprobs is not None:
        np.testing.assert_allclose(np.asarray(a.policy_logprobs),
                                   np.asarray(b.policy_logprobs), atol=atol)


# ----------------------------------------------------------------- parity with transformers

def _hf_tiny(model_type, tmp_path, torch, transformers):
    hf = tiny_hf_model(model_type, torch, transformers)
    hf.eval()
    hf.save_pretrained(tmp_path)
    return hf


def _hf_greedy(hf, torch, tokens, mask, max_new, eos=None, pad=0):
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                          attention_mask=torch.tensor(mask.astype(np.int64)),
                          do_sample=False, max_new_tokens=max_new, min_new_tokens=0,
                          eos_token_id=eos, pad_token_id=pad, top_k=None, top_p=None,
                          temperature=None)
    gen = out[:, tokens.shape[1]:].numpy()
    return np.pad(gen, ((0, 0), (0, max_new - gen.shape[1])), constant_values=pad)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_greedy_matches_transformers_generate(model_type, tmp_path):
    torch = pytest.importorskip("torch", reason="parity with transformers needs torch")
    transformers = pytest.importorskip("transformers")
    from marft_jax.models.weights import load_model

    hf = _hf_tiny(model_type, tmp_path, torch, transformers)
    loaded = load_model(str(tmp_path), lora=LoraConfig(num_adapters=2))
    state = (loaded.graphdef, loaded.base, loaded.lora)
    tokens, mask = _prompts(batch=3, length=8, seed=1)
    free = _hf_greedy(hf, torch, tokens, mask, N)
    # A stop token from the middle of row 0 (its first new token after the first): rows
    # stop (or not) and pad identically.
    fresh = [i for i in range(1, N) if free[0, i] not in free[0, :i]]
    assert fresh, "degenerate continuation"
    stop = int(free[0, fresh[0]])
    reference = _hf_greedy(hf, torch, tokens, mask, N, eos=stop)
    config = SamplerConfig(max_new_tokens=N, greedy=True, pad_token_id=0,
                           stop_token_ids=(stop,))
    ours = _gen(state, tokens, mask, 0, jax.random.key(0), 0.0, N, config)
    np.testing.assert_array_equal(np.asarray(ours.tokens), reference)
    first_stop = [list(r).index(stop) + 1 if stop in r else N for r in reference]
    assert first_stop[0] == fresh[0] + 1
    np.testing.assert_array_equal(np.asarray(ours.lengths), first_stop)
    np.testing.assert_array_equal(np.asarray(ours.mask),
                                  np.arange(N)[None, :] < np.asarray(first_stop)[:, None])


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2_transformers, smollm2_ours,
                                             smollm2_tokenizer):
    torch = pytest.importorskip("torch", reason="parity with transformers needs torch")
    ids = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}])
    tokens = np.asarray([ids], np.int32)
    mask = np.ones_like(tokens, bool)
    reference = _hf_greedy(smollm2_transformers, torch, tokens, mask, 32)
    state = (smollm2_ours.graphdef, smollm2_ours.base, smollm2_ours.lora)
    config = SamplerConfig(max_new_tokens=32, greedy=True, pad_token_id=0)
    ours = _gen(state, tokens, mask, -1, jax.random.key(0), 0.0, 32, config)
    np.testing.assert_array_equal(np.asarray(ours.tokens), reference)


# ------------------------------------------------------- log-probs vs a full recomputation

@pytest.mark.parametrize("top_k,top_p", [(20, 0.9), (0, 1.0)])
def test_logprobs_equal_full_forward_recomputation(model, top_k, top_p):
    graphdef, base, lora = model
    tokens, mask = _prompts(batch=4, length=7, seed=2)
    ids = np.array([0, 2, -1, 1])
    temps = np.array([0.7, 1.3, 0.5, 0.0])  # the last row is greedy
    config = SamplerConfig(max_new_tokens=N, top_k=top_k, top_p=top_p, pad_token_id=0)
    gen = _gen(model, tokens, mask, ids, jax.random.key(3), temps, [N, 6, N, N], config)
    full_tokens = jnp.concatenate([jnp.asarray(tokens), gen.tokens], axis=1)
    full_mask = jnp.concatenate([jnp.asarray(mask), gen.mask], axis=1)
    logits = F.sequence_logits(graphdef, base, lora, full_tokens, full_mask, jnp.asarray(ids))
    p = tokens.shape[1]
    step_logits = logits[:, p - 1:p - 1 + N]  # [batch, N, vocab]: predicts generated token t
    policy = jnp.take_along_axis(jax.nn.log_softmax(step_logits), gen.tokens[..., None],
                                 -1)[..., 0]
    sampled = jax.vmap(lambda lg, tok: sample_logprobs(lg, jnp.asarray(temps, jnp.float32),
                                                       tok, config),
                       in_axes=(1, 1), out_axes=1)(step_logits, gen.tokens)
    m = np.asarray(gen.mask)
    assert m[:, 0].all() and np.asarray(gen.lengths)[1] == 6
    np.testing.assert_allclose(np.asarray(gen.policy_logprobs)[m], np.asarray(policy)[m],
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(gen.logprobs)[m], np.asarray(sampled)[m], atol=1e-4)
    assert np.isfinite(np.asarray(gen.logprobs)[m]).all()
    assert (np.asarray(gen.logprobs)[3] == 0).all()  # greedy row: a point mass
    assert (np.asarray(gen.logprobs)[:3][m[:3]] < 0).any()
    assert (np.asarray(gen.logprobs)[~m] == 0).all()


# --------------------------------------------------------------------- adapters and keys

def test_mixed_adapter_batch_equals_per_adapter_calls(model):
    tokens, mask = _prompts(batch=6, length=7, seed=4)
    ids = np.array([2, 0, BASE_ADAPTER, 2, BASE_ADAPTER, 0])
    keys = jax.random.split(jax.random.key(5), 6)  # one key per row
    config = SamplerConfig(max_new_tokens=N, top_k=30, pad_token_id=0)
    mixed = _gen(model, tokens, mask, ids, keys, 0.8, N, config)
    for adapter in (2, 0, BASE_ADAPTER):
        rows = np.flatnonzero(ids == adapter)
        alone = _gen(model, tokens[rows], mask[rows], adapter, keys[rows], 0.8, N, config)
        _assert_generation_equal(jax.tree.map(lambda x: x[rows], mixed), alone)
    # The adapters do matter: adapter 0 on rows 0 and 3 gives other tokens than adapter 2.
    rows = np.array([0, 3])
    other = _gen(model, tokens[rows], mask[rows], 0, keys[rows], 0.8, N, config)
    assert (np.asarray(other.tokens) != np.asarray(mixed.tokens)[rows]).any()


def test_merged_adapter_forward_equals_the_per_row_lora(model):
    graphdef, base, lora = model
    tokens, mask = _prompts(batch=3, length=6, seed=11)
    before = [np.asarray(x) for x in jax.tree.leaves(base)]
    positions = F.positions_from_mask(jnp.asarray(mask))
    run = lambda b, ids: F.forward(graphdef, b, lora, jnp.asarray(tokens), positions, ids,
                                   jnp.asarray(mask))[0]
    for adapter in (0, 2):
        merged = run(F.merge_adapter(graphdef, base, lora, adapter), None)
        per_row = run(base, jnp.full((3,), adapter, jnp.int32))
        np.testing.assert_allclose(np.asarray(merged), np.asarray(per_row), atol=2e-5)
        assert np.abs(np.asarray(merged) - np.asarray(run(base, None))).max() > 1e-2
    assert F.merge_adapter(graphdef, base, lora, BASE_ADAPTER) is base
    for x, y in zip(jax.tree.leaves(base), before):  # the caller's state is left alone
        np.testing.assert_array_equal(np.asarray(x), y)
    # An adapter whose B is zero (a fresh one) merges to the base weights exactly.
    fresh = jax.tree.map(jnp.zeros_like, lora)
    merged = F.merge_adapter(graphdef, base, fresh, 1)
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(base)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@functools.partial(jax.jit, static_argnums=0, static_argnames=("config", "one_adapter"))
def _gen_one(graphdef, base, lora, tokens, mask, ids, key, *, config, one_adapter):
    return generate(graphdef, base, lora, tokens, mask, ids, key, 0.8, N, config=config,
                    one_adapter=one_adapter)


def test_one_adapter_batch_decodes_on_merged_weights_like_per_row_lora(model):
    graphdef, base, lora = model
    tokens, mask = _prompts(batch=4, length=7, seed=12)
    key = jax.random.key(13)
    config = SamplerConfig(max_new_tokens=N, top_k=30, pad_token_id=0)
    for adapter in (2, 0, BASE_ADAPTER):
        ids = jnp.full((4,), adapter, jnp.int32)
        per_row = _gen_one(graphdef, base, lora, tokens, mask, ids, key, config=config,
                           one_adapter=None)
        merged = _gen_one(graphdef, base, lora, tokens, mask, ids, key, config=config,
                          one_adapter=adapter)
        _assert_generation_equal(merged, per_row)
        # Switched off, the hint changes nothing at all.
        off = _gen_one(graphdef, base, lora, tokens, mask, ids, key,
                       config=config.replace(merge_adapter=False), one_adapter=adapter)
        _assert_generation_equal(off, per_row, atol=0)
    # The decode steps really run on the merged weights: naming another adapter than the
    # rows' changes every token after the first (which the prefill samples per row).
    ids = jnp.full((4,), 2, jnp.int32)
    right = _gen_one(graphdef, base, lora, tokens, mask, ids, key, config=config,
                     one_adapter=2)
    wrong = _gen_one(graphdef, base, lora, tokens, mask, ids, key, config=config,
                     one_adapter=0)
    np.testing.assert_array_equal(np.asarray(wrong.tokens)[:, 0], np.asarray(right.tokens)[:, 0])
    assert (np.asarray(wrong.tokens)[:, 1:] != np.asarray(right.tokens)[:, 1:]).any()


def test_same_key_same_output_different_key_different(model):
    tokens, mask = _prompts(batch=3, length=6, seed=6)
    a = _gen(model, tokens, mask, 0, jax.random.key(7), 1.0, N, DEFAULT)
    b = _gen(model, tokens, mask, 0, jax.random.key(7), 1.0, N, DEFAULT)
    c = _gen(model, tokens, mask, 0, jax.random.key(8), 1.0, N, DEFAULT)
    _assert_generation_equal(a, b, atol=0)
    assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()


def test_top_k_one_and_tiny_top_p_equal_greedy(model):
    tokens, mask = _prompts(batch=3, length=6, seed=8)
    top1 = SamplerConfig(max_new_tokens=N, top_k=1, pad_token_id=0)
    greedy = _gen(model, tokens, mask, 1, jax.random.key(0), 0.0, N, top1)  # T=0: argmax
    for config in (top1, top1.replace(top_k=0, top_p=1e-6)):
        sampled = _gen(model, tokens, mask, 1, jax.random.key(9), 1.0, N, config)
        np.testing.assert_array_equal(np.asarray(sampled.tokens), np.asarray(greedy.tokens))
        np.testing.assert_allclose(np.asarray(sampled.logprobs), 0.0, atol=1e-6)
    # ... while plain sampling at T=1 from the same key does leave the argmax path.
    free = _gen(model, tokens, mask, 1, jax.random.key(9), 1.0, N, DEFAULT)
    assert (np.asarray(free.tokens) != np.asarray(greedy.tokens)).any()


def test_draw_follows_the_truncated_tempered_distribution():
    logits = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]], jnp.float32))
    rows = 20000
    logits = jnp.broadcast_to(logits, (rows, 5))
    temps = jnp.full((rows,), 0.5, jnp.float32)
    config = SamplerConfig(top_k=3, top_p=1.0)
    tokens, lp = draw(logits, jax.random.split(jax.random.key(0), rows), temps, config)
    w = np.array([0.4, 0.3, 0.15]) ** 2  # temperature 0.5 squares the kept probabilities
    expected = np.zeros(5)
    expected[[1, 3, 4]] = w / w.sum()
    freq = np.bincount(np.asarray(tokens), minlength=5) / rows
    np.testing.assert_allclose(freq, expected, atol=0.015)
    np.testing.assert_allclose(np.exp(np.asarray(lp)), expected[np.asarray(tokens)], rtol=1e-5)


def test_fast_argmax_equals_jnp_argmax_with_ties():
    logits = jax.random.normal(jax.random.key(0), (16, 300)).round(1)  # many ties
    logits = logits.at[3, 7].set(9.0).at[3, 250].set(9.0)
    np.testing.assert_array_equal(np.asarray(argmax(logits)),
                                  np.asarray(jnp.argmax(logits, axis=-1)))
    assert int(argmax(logits)[3]) == 7  # the first maximum, like jnp.argmax


# -------------------------------------------------------------------- stopping and limits

def test_rows_that_stop_early_are_padded_and_masked(model):
    tokens, mask = _prompts(batch=3, length=6, seed=10)
    free = _gen(model, tokens, mask, 0, jax.random.key(0), 0.0, N, DEFAULT)  # T=0: greedy
    stop = int(free.tokens[0, 2])
    stop_at = [list(np.asarray(r)).index(stop) + 1 if stop in np.asarray(r) else N
               for r in free.tokens]
    limits = np.array([N, 4, 0])
    gen = _gen(model, tokens, mask, 0, jax.random.key(0), 0.0, limits,
               DEFAULT.replace(stop_token_ids=(stop, 255), pad_token_id=1, greedy=True,
                               policy_logprobs=False))
    assert gen.policy_logprobs is None
    lengths = np.minimum(stop_at, limits)
    np.testing.assert_array_equal(np.asarray(gen.lengths), lengths)
    cols = np.arange(N)[None, :]
    valid = cols < lengths[:, None]
    np.testing.assert_array_equal(np.asarray(gen.mask), valid)
    np.testing.assert_array_equal(np.asarray(gen.tokens)[valid], np.asarray(free.tokens)[valid])
    assert (np.asarray(gen.tokens)[~valid] == 1).all()
    assert np.asarray(gen.tokens)[0, lengths[0] - 1] == stop  # the stop token is kept


def test_scan_loop_equals_while_loop(model):
    tokens, mask = _prompts(batch=3, length=6, seed=11)
    a = _gen(model, tokens, mask, [0, 1, 2], jax.random.key(1), 0.9, [N, 5, 1], DEFAULT)
    b = _gen(model, tokens, mask, [0, 1, 2], jax.random.key(1), 0.9, [N, 5, 1],
             DEFAULT.replace(loop="scan", unroll=2))
    _assert_generation_equal(a, b)


def test_float32_compute_of_bf16_weights_equals_the_upcast_model(model):
    graphdef, base, lora = model
    base16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), base)
    base32 = jax.tree.map(lambda x: x.astype(jnp.float32), base16)
    tokens, mask = _prompts(batch=3, length=6, seed=12)
    upcast = _gen((graphdef, base32, lora), tokens, mask, 0, jax.random.key(2), 0.9, N,
                  DEFAULT)
    mixed = _gen((graphdef, base16, lora), tokens, mask, 0, jax.random.key(2), 0.9, N,
                 DEFAULT.replace(prefill_dtype="float32", decode_dtype="float32"))
    _assert_generation_equal(upcast, mixed)


# ------------------------------------------------------------------ the host-side sampler

def test_sampler_compiles_once_per_bucket_and_drops_padding_rows(model):
    graphdef, base, lora = model
    config = SamplerConfig(max_new_tokens=N, top_k=20, pad_token_id=0, stop_token_ids=(9,))
    sampler = Sampler(graphdef, config, batch_buckets=(4, 8), prompt_buckets=(8, 16))
    rng = np.random.default_rng(13)
    calls = [(3, [0, 1, 2], None), (4, -1, 0.3), (2, [2, 2], [1.0, 0.0]), (3, 1, None),
             (4, [1, 0, -1, 2], 0.9)]
    for i, (batch, ids, temps) in enumerate(calls):
        prompts = [list(rng.integers(3, 256, rng.integers(2, 9))) for _ in range(batch)]
        new_lora = _random_lora(lora, seed=20 + i)  # new adapter weights, same shapes
        gen = sampler(base, new_lora, prompts, ids, jax.random.key(i), temps,
                      max_new_tokens=rng.integers(1, N + 1, batch))
        assert gen.tokens.shape == (batch, N) and gen.lengths.shape == (batch,)
    assert sampler.compile_count == 1
    sampler(base, lora, [[5] * 12], 0, jax.random.key(0))  # next prompt bucket
    assert sampler.compile_count == 2


def test_sampler_rows_do_not_depend_on_bucket_padding(model):
    graphdef, base, lora = model
    tokens, mask = _prompts(batch=3, length=6, seed=14)
    sampler = Sampler(graphdef, DEFAULT, batch_buckets=(8,), prompt_buckets=(16,))
    via_sampler = sampler(base, lora, (tokens, mask), [0, 1, 2], jax.random.key(3), 0.7)
    direct = _gen(model, tokens, mask, [0, 1, 2], jax.random.key(3), 0.7, N, DEFAULT)
    _assert_generation_equal(via_sampler, direct, atol=1e-4)
    # A second call reuses (donates) the kept cache and still gives the same result.
    again = sampler(base, lora, (tokens, mask), [0, 1, 2], jax.random.key(3), 0.7)
    _assert_generation_equal(via_sampler, again, atol=0)


# ------------------------------------------- decode phases over a segmented, bf16 KV cache

@pytest.mark.parametrize("loop,chunk", [("while", 3), ("while", 2 * N), ("scan", 4)])
def test_decode_chunks_equal_one_phase_over_the_whole_cache(model, loop, chunk):
    """Phases of 3 tokens (3 of them), one phase (a chunk beyond N), 4 + 4 + 1 (scan)."""
    tokens, mask = _prompts(batch=3, length=6, seed=13)
    config = DEFAULT.replace(loop=loop)
    whole = _gen(model, tokens, mask, [0, 1, 2], jax.random.key(4), 0.9, [N, 5, 1], config)
    chunked = _gen(model, tokens, mask, [0, 1, 2], jax.random.key(4), 0.9, [N, 5, 1],
                   config.replace(decode_chunk=chunk))
    _assert_generation_equal(whole, chunked)


def test_decode_chunks_with_one_new_token(model):
    tokens, mask = _prompts(batch=2, length=5, seed=14)
    config = SamplerConfig(max_new_tokens=1, pad_token_id=0)
    whole = _gen(model, tokens, mask, 0, jax.random.key(5), 0.9, 1, config)
    chunked = _gen(model, tokens, mask, 0, jax.random.key(5), 0.9, 1,
                   config.replace(decode_chunk=4))
    _assert_generation_equal(whole, chunked)


@pytest.mark.parametrize("decode_chunk", [0, 4])
def test_bfloat16_cache_logprobs_agree_with_the_float32_forward(model, decode_chunk):
    """A bf16 KV cache (stored as uint16 bits) gives the log-probs of its own tokens within
    0.01 nats of the full float32 forward (1e-3 observed); the float32 cache agrees to
    1e-4 (above; 5e-7 observed)."""
    graphdef, base, lora = model
    tokens, mask = _prompts(batch=4, length=7, seed=15)
    ids = np.array([0, 2, -1, 1])
    config = DEFAULT.replace(cache_dtype="bfloat16", decode_chunk=decode_chunk)
    gen = _gen(model, tokens, mask, ids, jax.random.key(6), 0.8, N, config)
    full_tokens = jnp.concatenate([jnp.asarray(tokens), gen.tokens], axis=1)
    full_mask = jnp.concatenate([jnp.asarray(mask), gen.mask], axis=1)
    logits = F.sequence_logits(graphdef, base, lora, full_tokens, full_mask, jnp.asarray(ids))
    p = tokens.shape[1]
    policy = jnp.take_along_axis(jax.nn.log_softmax(logits[:, p - 1:p - 1 + N]),
                                 gen.tokens[..., None], -1)[..., 0]
    m = np.asarray(gen.mask)
    err = np.abs(np.asarray(gen.policy_logprobs)[m] - np.asarray(policy)[m])
    assert 0 < err.max() < 0.01  # bf16 rounding shows, within tolerance


def test_bfloat16_cache_is_stored_as_bits_and_reused_by_the_sampler(model):
    from marft_jax.models.decoder import BF16_BITS

    graphdef, base, lora = model
    config = SamplerConfig(max_new_tokens=N, pad_token_id=0, cache_dtype="bfloat16",
                           decode_chunk=4)
    sampler = Sampler(graphdef, config, batch_buckets=(4,), prompt_buckets=(8,))
    prompts = [[5, 6, 7], [8, 9], [10], [11, 12, 13, 14]]
    first = sampler(base, lora, prompts, [0, 1, 2, 0], jax.random.key(7))
    again = sampler(base, lora, prompts, [0, 1, 2, 0], jax.random.key(7))
    assert sampler.compile_count == 1
    _assert_generation_equal(first, again, atol=0)
    cache = sampler._caches[(4, 8)]
    assert cache.segment_slots == (8, 4, 4, 1)
    assert all(x.dtype == BF16_BITS for x in jax.tree.leaves(cache))


# ------------------------------------------------------- shared prefixes, prefilled once

@pytest.mark.parametrize("decode_chunk", [0, 4])
def test_shared_prefix_generates_like_the_concatenated_prompts(model, decode_chunk):
    from marft_jax.sampling import SharedPrefix

    graphdef, base, lora = model
    prefix_tokens = np.array([[0, 0, 21, 22, 23], [31, 32, 33, 34, 35]], np.int32)
    prefix_mask = prefix_tokens > 0  # group 0 left-padded
    group = np.array([0, 1, 1, 0])
    group_ids = np.array([2, BASE_ADAPTER])
    tokens, mask = _prompts(batch=4, length=6, seed=16)  # own prompts, left-padded
    config = DEFAULT.replace(decode_chunk=decode_chunk)
    prefix = SharedPrefix(tokens=jnp.asarray(prefix_tokens), mask=jnp.asarray(prefix_mask),
                          adapter_ids=jnp.asarray(group_ids), group=jnp.asarray(group))
    run = jax.jit(generate, static_argnums=0, static_argnames="config")
    args = (jnp.asarray(group_ids[group]), jax.random.key(8), jnp.float32(0.9),
            jnp.int32(N))
    shared = run(graphdef, base, lora, jnp.asarray(tokens), jnp.asarray(mask), *args,
                 config=config, prefix=prefix)
    full = run(graphdef, base, lora, jnp.concatenate([prefix_tokens[group], tokens], 1),
               jnp.concatenate([prefix_mask[group], mask], 1), *args, config=config)
    _assert_generation_equal(shared, full)
