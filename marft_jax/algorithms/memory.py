"""How much memory the update needs, and micro-batches sized to a memory budget.

`ppo.grad_accum_steps = 0` asks for the number of micro-batches per minibatch to be chosen
here, from `train.memory_budget_gb` (0 = half the machine's memory), instead of by hand:
the fewest micro-batches (a divisor of the minibatch's envs, so no env is dropped) whose
estimated peak fits the budget. More micro-batches give the same gradients up to float
rounding (the objective's sums and counts add up exactly), so only time and memory change.

The estimate (bytes; B rows in a micro-batch = rounds × agents × envs, T = observation +
action width before the padding trim, K the action width, s the activation dtype's bytes,
d / f / H / L / V the model's hidden, MLP, head, layer and vocabulary sizes):

    peak        = RUNTIME_BYTES + parameters + update activations of one micro-batch
    layer(B, T) = B·T·s·(4f + 5d) + 12·B·H·T²     one layer's intermediates kept for the
                                                  backward (attention scores in float32)
    head(B, K)  = 12·B·K·V                         the LM head's float32 logits and their
                                                  log-softmax / softmax / entropy terms;
                  4·C·V with `ppo.head_chunk` C    (one chunk's, recomputed in the backward)
    remat none:   L·layer + 4·B·T·s·d + head
    remat layers: L·B·T·s·d + 2·layer weight bytes + layer + 7·B·T·s·d + head
                  (the scan's carries, the frozen weights of the layer a scan step runs,
                  and one layer recomputed at a time)
    dots policies: as "layers", plus the L layers' projection outputs

The coefficients come from XLA's `memory_analysis()` of the compiled update on SmolLM2's
layer shapes (d 576, f 1536, 9 heads, V 49152; 2, 4 and 30 layers, B 8-32, T 128 and 256;
`benchmarks/memory_estimate.py` prints both): for SmolLM2 itself with remat "layers" the
estimate is +5 % over XLA's temporary bytes with the whole head and up to +11 % with
chunks of 128, and within -11 % .. +5 % for shallow models without remat (BUILD_NOTES.md,
"Memory"); `RUNTIME_BYTES` (Python, JAX, XLA's compiled programs, the
tokenizer, the rollout's leftovers) is a SmolLM2 iteration's peak RSS less its parameters
and XLA's temporary bytes: 1.55-1.61 GB over three settings at the reference's
(`train.release_host_memory` on; BUILD_NOTES.md "Throughput", session 13).
"""

from __future__ import annotations

import os

from marft_jax.errors import ConfigError
from marft_jax.models.config import ModelConfig

GB = 1e9
RUNTIME_BYTES = int(1.6 * GB)
LOGIT_BYTES = 4  # the LM head and attention scores run in float32 whatever the dtype


def layer_param_count(model: ModelConfig) -> int:
    """Base parameters of one decoder layer (projections, biases, norms)."""
    d, f, hd = model.hidden_size, model.intermediate_size, model.head_dim
    q, kv = model.num_heads * hd, model.num_kv_heads * hd
    bias = (q + 2 * kv) if model.attention_bias else 0
    return d * (q + 2 * kv) + q * d + 3 * d * f + bias + 2 * d


def param_bytes(model: ModelConfig) -> int:
    """Bytes of the base model's parameters."""
    s = model.jnp_dtype.dtype.itemsize
    embeddings = model.vocab_size * model.hidden_size * (1 if model.tie_word_embeddings else 2)
    return s * (embeddings + model.num_layers * layer_param_count(model) + model.hidden_size)


def _layer_bytes(model: ModelConfig, rows: int, tokens: int) -> int:
    s = model.jnp_dtype.dtype.itemsize
    d, f = model.hidden_size, model.intermediate_size
    linear = rows * tokens * s * (4 * f + 5 * d)
    scores = 3 * LOGIT_BYTES * rows * model.num_heads * tokens * tokens
    return linear + scores


def activation_bytes(model: ModelConfig, rows: int, tokens: int, action_tokens: int,
                     remat: str, head_chunk: int = 0) -> int:
    """Estimated peak bytes of one micro-step's forward and backward pass.

    Args:
        model: the decoder's configuration.
        rows: rows of the micro-batch (rounds × agents × envs).
        tokens: row width T (observation + action tokens).
        action_tokens: K, the positions the LM head runs on.
        remat: a `models.remat.REMAT_POLICIES` name.
        head_chunk: `ppo.head_chunk` (0: the head over all positions at once).

    Returns:
        The estimate in bytes (see the module docstring).
    """
    s = model.jnp_dtype.dtype.itemsize
    d, hd = model.hidden_size, model.head_dim
    carry = rows * tokens * s * d  # one [rows, T, d] hidden state
    positions = rows * action_tokens
    head = LOGIT_BYTES * model.vocab_size * (
        3 * positions if not head_chunk or head_chunk >= positions else head_chunk)
    layer = _layer_bytes(model, rows, tokens)
    if remat == "none":
        return model.num_layers * layer + 4 * carry + head
    weights = s * layer_param_count(model)  # the layer's frozen weights the scan step picks
    total = model.num_layers * carry + 2 * weights + layer + 7 * carry + head
    if remat.startswith("dots"):
        projections = (model.num_heads + 2 * model.num_kv_heads) * hd + 2 * d \
            + 2 * model.intermediate_size
        total += model.num_layers * rows * tokens * s * projections
    return total


def peak_bytes(model: ModelConfig, rows: int, tokens: int, action_tokens: int,
               remat: str, head_chunk: int = 0) -> int:
    """Estimated peak of the whole process during the update (`RUNTIME_BYTES` +
    parameters + one micro-batch's activations)."""
    return (RUNTIME_BYTES + param_bytes(model)
            + activation_bytes(model, rows, tokens, action_tokens, remat, head_chunk))


def machine_memory_bytes() -> int:
    """Physical memory, or the cgroup's limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def budget_bytes(memory_budget_gb: float) -> int:
    """The budget in bytes: `memory_budget_gb`, or half the machine's memory when 0."""
    if memory_budget_gb > 0:
        return int(memory_budget_gb * GB)
    return machine_memory_bytes() // 2


def choose_grad_accum_steps(model: ModelConfig, rows_per_env: int, tokens: int,
                            action_tokens: int, envs_per_minibatch: int, remat: str,
                            budget: int, head_chunk: int = 0) -> int:
    """The fewest micro-batches per minibatch whose estimated peak fits `budget` bytes.

    Only divisors of `envs_per_minibatch` are considered, so every env is used.

    Raises:
        ConfigError: naming `train.memory_budget_gb` when even one env per micro-batch
            does not fit.
    """
    for steps in range(1, envs_per_minibatch + 1):
        if envs_per_minibatch % steps:
            continue
        rows = rows_per_env * (envs_per_minibatch // steps)
        if peak_bytes(model, rows, tokens, action_tokens, remat, head_chunk) <= budget:
            return steps
    need = peak_bytes(model, rows_per_env, tokens, action_tokens, remat, head_chunk)
    raise ConfigError(
        f"config field 'train.memory_budget_gb': {budget / GB:.2f} GB cannot hold the update "
        f"even one env per micro-batch (estimated {need / GB:.2f} GB with ppo.remat="
        f"{remat!r}); raise it, or set ppo.remat='layers' or fewer tokens")
