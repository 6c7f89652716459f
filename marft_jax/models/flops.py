"""Matmul FLOPs of the decoder, counted from its shapes (for MFU figures).

Counts 2·m·n·k per matrix product: the projections (base and LoRA), the attention products
(scores and values over the full `T × T` grid the masked attention computes) and the LM
head. Elementwise work (norms, RoPE, softmax) is left out, as MFU conventionally does.
"""

from __future__ import annotations

from marft_jax.models.config import LoraConfig, ModelConfig
from marft_jax.models.projections import PROJECTIONS


def _projection_dims(model: ModelConfig) -> dict[str, tuple[int, int]]:
    d, f, hd = model.hidden_size, model.intermediate_size, model.head_dim
    q, kv = model.num_heads * hd, model.num_kv_heads * hd
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def layers_forward_flops(model: ModelConfig, lora: LoraConfig | None, rows: int,
                         tokens: int, *, context: int = 0, backward: bool = False) -> int:
    """FLOPs of one forward pass of all decoder layers over `rows × tokens` tokens.

    Every token's attention runs over `context + tokens` keys: `context` cached keys and
    values before the row (a shared prefix's, `models.functional.prefix_forward`), then the
    row's own.

    LoRA runs every adapter's A product (`[in, adapters·rank]`) and one B product per row,
    as `models.layers.LoRALinear` does. With `backward`, the FLOPs of the backward pass that
    trains only the adapters: the input gradients of every product (as many FLOPs as the
    forward), the adapters' weight gradients (as many again for the LoRA products) and
    the attention's four products (twice its forward); base weights get no gradient.
    """
    n = rows * tokens
    per_token = 0
    dims = _projection_dims(model)
    for name in PROJECTIONS:
        d_in, d_out = dims[name]
        per_token += 2 * d_in * d_out
        if lora is not None and name in lora.targets:
            adapters = 2 * d_in * lora.num_adapters * lora.rank + 2 * lora.rank * d_out
            per_token += 2 * adapters if backward else adapters
    attention = 2 * 2 * rows * model.num_heads * tokens * (context + tokens) * model.head_dim
    return model.num_layers * (n * per_token + (2 if backward else 1) * attention)


def head_flops(model: ModelConfig, positions: int) -> int:
    """FLOPs of the LM head on `positions` hidden states (also its backward pass, which
    computes only the input gradient: the embedding is frozen)."""
    return 2 * positions * model.hidden_size * model.vocab_size

