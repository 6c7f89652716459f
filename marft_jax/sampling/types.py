"""Static sampler configuration and the generation result pytree."""

from __future__ import annotations

import dataclasses

import jax
from flax import struct

from marft_jax.errors import ConfigError

Array = jax.Array

DTYPE_NAMES = ("float32", "bfloat16")
LOOPS = ("while", "scan")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Everything about generation that fixes shapes or control flow (hashable, static).

    Per-row temperatures and per-row token limits are traced arrays passed to `generate`, so
    they vary without recompiling; everything here is compiled in.

    Attributes:
        max_new_tokens: static upper bound N on generated tokens (the output width).
        top_k: keep the k most likely tokens (0 = the whole vocabulary). Uses `lax.top_k`,
            so it keeps exactly k tokens (transformers keeps ties with the k-th as well).
        top_p: nucleus mass (1.0 = off), applied after temperature and top-k as in
            transformers: the smallest prefix of the sorted tokens whose mass reaches top_p.
        greedy: argmax decoding for every row (per-row greedy: temperature <= 0).
        stop_token_ids: ids that end a row (EOS and end-of-turn markers). The stop token is
            kept in the output and counted in `lengths`.
        pad_token_id: written after a row stops.
        policy_logprobs: also return log-probs of the raw (untempered, untruncated) policy.
        loop: "while" (`lax.while_loop`, exits once every row is done) or "scan" (`lax.scan`
            over N steps whose body is skipped with `lax.cond` once every row is done).
        unroll: scan unroll factor (loop="scan" only).
        prefill_dtype: dtype the prompt forward pass computes in (None = the weights' own).
            On CPUs without AMX, XLA's bfloat16 matmuls are slower than float32 at large M,
            so bf16 weights may prefill faster upcast to float32.
        decode_dtype: dtype of the per-token decode steps (None = the weights' own).
        cache_dtype: dtype of the KV cache. None: float32 on the CPU backend (XLA's CPU
            backend upcasts a bfloat16 cache update to float32 and so copies the whole
            cache on every step instead of writing one slot in place), else the decode
            dtype. "bfloat16" is stored as its uint16 bit pattern (`models.decoder.KVCache`),
            which XLA:CPU writes in place; attention then reads it as bfloat16.
        decode_chunk: 0 (default): every decode step attends over all `P + N - 1` cache
            slots, filled or not. c > 0: the generated tokens' slots are kept in segments
            of c slots, and the decode loop runs in phases of c tokens; phase j attends
            over the prompt and segments 0..j only (the filled ones), so early steps read
            less of the cache. Exact up to float summation order; compiles one loop body
            per phase (`ceil((N - 1) / c)` of them).
        merge_adapter: when a call says that every row runs one adapter (`generate(...,
            one_adapter=i)`, as the rollout does for a wave of one agent), decode on the
            weights with that adapter merged in instead of applying LoRA per row (one
            merge per call; the same tokens up to float rounding). False: always per row.
    """

    max_new_tokens: int = 256
    top_k: int = 50
    top_p: float = 1.0
    greedy: bool = False
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    policy_logprobs: bool = True
    loop: str = "while"
    unroll: int = 1
    prefill_dtype: str | None = None
    decode_dtype: str | None = None
    cache_dtype: str | None = None
    decode_chunk: int = 0
    merge_adapter: bool = True

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ConfigError("sampler config: 'max_new_tokens' must be positive, "
                              f"got {self.max_new_tokens}")
        if self.top_k < 0:
            raise ConfigError(f"sampler config: 'top_k' must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"sampler config: 'top_p' must be in (0, 1], got {self.top_p}")
        if self.loop not in LOOPS:
            raise ConfigError(f"sampler config: 'loop' is {self.loop!r}; choose from {LOOPS}")
        if self.decode_chunk < 0:
            raise ConfigError("sampler config: 'decode_chunk' must be >= 0, got "
                              f"{self.decode_chunk}")
        if self.unroll < 1:
            raise ConfigError(f"sampler config: 'unroll' must be >= 1, got {self.unroll}")
        for name in ("prefill_dtype", "decode_dtype", "cache_dtype"):
            value = getattr(self, name)
            if value is not None and value not in DTYPE_NAMES:
                raise ConfigError(f"sampler config: {name!r} is {value!r}; choose from "
                                  f"{DTYPE_NAMES} or None")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    def replace(self, **changes) -> "SamplerConfig":
        return dataclasses.replace(self, **changes)


@struct.dataclass
class Generation:
    """Generated tokens with the log-probs PPO needs, right-padded after each row's stop.

    Attributes:
        tokens: `[batch, N]` int32 generated ids; `pad_token_id` after the row stopped.
        mask: `[batch, N]` bool, true for generated tokens (the stop token included).
        logprobs: `[batch, N]` float32 log-probs of the distribution actually sampled from
            (after temperature, top-k and top-p; 0 for greedy rows, a point mass); 0 where
            `mask` is false.
        policy_logprobs: `[batch, N]` float32 log-probs under the raw-logit policy
            (`log_softmax(logits)`, no temperature or truncation), 0 where `mask` is false;
            None when disabled in the config.
        lengths: `[batch]` int32 number of generated tokens per row.
        prompt_features: `[batch, H]` the final (post-norm) hidden state of each row's last
            prompt token from the prefill, in the prefill's dtype: what an action-level
            critic on the policy's trunk reads (`algorithms.batch.prepare_batch`); None
            where a generator does not provide it.
    """

    tokens: Array
    mask: Array
    logprobs: Array
    policy_logprobs: Array | None
    lengths: Array
    prompt_features: Array | None = None


@struct.dataclass
class SharedPrefix:
    """Prompt tokens shared by groups of rows: prefilled once per group, then broadcast.

    Row r's prompt is `tokens[group[r]]` followed by its own prompt row; a group's prefix
    runs with `adapter_ids[g]`, which must be the adapter of every row in the group (the
    prefix's keys and values depend on it).

    Attributes:
        tokens: `[G, L]` int32 prefix ids (padding anywhere, usually left).
        mask: `[G, L]` bool, true for real prefix tokens.
        adapter_ids: `[G]` int32 adapter of each group (< 0: base model).
        group: `[batch]` int32 group of each row.
    """

    tokens: Array
    mask: Array
    adapter_ids: Array
    group: Array

    @property
    def length(self) -> int:
        return self.tokens.shape[1]
