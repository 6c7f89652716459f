"""Batched generation for LoRA multi-agent decoders.

`generate` is the pure, jittable core (prefill + decode loop over a KV cache); `Sampler`
wraps it for host callers with shape buckets and a compile counter.
"""

from marft_jax.sampling.distributions import (argmax, candidates, draw, policy_logprobs,
                                              sample_logprobs)
from marft_jax.sampling.generate import (cache_slots, cast_params, generate,
                                         generate_with_cache, init_cache, model_config,
                                         row_keys)
from marft_jax.sampling.sampler import Sampler, bucket, left_pad
from marft_jax.sampling.types import Generation, SamplerConfig, SharedPrefix

__all__ = [
    "Generation", "Sampler", "SamplerConfig", "SharedPrefix", "argmax", "bucket", "cache_slots", "candidates",
    "cast_params", "draw", "generate", "generate_with_cache", "init_cache", "left_pad",
    "model_config", "policy_logprobs", "row_keys", "sample_logprobs",
]
