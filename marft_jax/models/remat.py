"""Rematerialisation of the decoder layers in differentiated passes (`ppo.remat`).

Without it, the backward pass of the update keeps every layer's intermediates alive (the
attention scores alone are `[rows, heads, T, T]` per layer), which is what makes the
SmolLM2 update need ~10 GB. With a policy, the layers run as one `lax.scan` over the
layers whose body is `jax.checkpoint`ed: between the forward and the backward
pass only the scan's carry (each layer's input, `[rows, T, hidden]`) and what the policy
saves are kept, and the backward recomputes one layer at a time.

Why a scan and not `jax.checkpoint` around each unrolled layer: XLA's CPU pipeline removes
optimisation barriers before common-subexpression elimination, so a checkpointed layer's
recomputation is merged back into the forward pass and nothing is saved (measured with
`memory_analysis()` on SmolLM2's shapes: 225 MB a layer either way; a `custom_vjp` whose
backward ties the recomputation to the cotangent with `lax.optimization_barrier` is merged
the same way). A loop body is never merged with the code outside it. The scan stacks only
the adapters (small; their gradients come back stacked); each step picks its layer's frozen
weights with a `lax.switch` on the layer index, which copies one layer's weights (~14 MB
for SmolLM2 in float32) where stacking them all kept a ~425 MB copy alive through the
forward and backward pass (XLA's temporary bytes of the reference-settings update: 1.11 ->
0.69 GB). The price is those per-step copies and about one more forward pass of compute.

The names are config values: "none", "layers" (save nothing inside a layer), or a
`jax.checkpoint_policies` policy that takes no arguments (what it saves is kept too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

# `ppo.remat` value -> the `jax.checkpoint` policy of the scanned layers (None: no remat).
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "layers": jax.checkpoint_policies.nothing_saveable,
    # Saves the matmul outputs without batch dimensions (the projections); recomputes the
    # attention scores, softmax and elementwise ops.
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def scan_layers(layers: Sequence[nnx.Module], x: Array, args: tuple, remat: str,
                cache: tuple[tuple[Array, ...], tuple[Array, ...]] | None = None
                ) -> tuple[Array, tuple[tuple[Array, ...], tuple[Array, ...]] | None]:
    """Applies identical decoder layers in order, rematerialised.

    Args:
        layers: the decoder layers (same structure, so their states stack).
        x: `[batch, tokens, hidden]` input of the first layer.
        args: the remaining layer arguments `(positions, adapter_ids, kv_valid,
            write_index)`, the same for every layer.
        remat: a `REMAT_POLICIES` name other than "none".
        cache: `(keys, values)`, one unsegmented `[batch, kv_heads, slots, head_dim]`
            array per layer each (stacked and scanned over with the layers; the
            shared-prefix scoring passes), or None.

    Returns:
        `([batch, tokens, hidden] the last layer's output, the new (keys, values) per
        layer or None)`.
    """
    policy = REMAT_POLICIES[remat]
    if policy is None:
        raise ValueError("scan_layers needs a remat policy; call the layers directly")
    splits = [nnx.split(layer, nnx.LoRAParam, ...) for layer in layers]
    graphdef = splits[0][0]
    if any(g != graphdef for g, _, _ in splits[1:]):
        raise ValueError("scan_layers needs layers of one structure")
    # The adapters are stacked (small, and their gradients come back stacked); the frozen
    # weights stay where they are and each step picks its layer's with a switch.
    adapters = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(a for _, a, _ in splits))
    frozen = [lambda w=w: w for _, _, w in splits]
    kv = None if cache is None else jax.tree.map(lambda *xs: jnp.stack(xs), *zip(*cache))

    def body(h, layer):
        index, adapter, layer_kv = layer
        weights = jax.lax.switch(index, frozen)
        return nnx.merge(graphdef, adapter, weights)(h, *args, layer_kv)

    x, new_kv = jax.lax.scan(jax.checkpoint(body, policy=policy, prevent_cse=False), x,
                             (jnp.arange(len(layers)), adapters, kv))
    if new_kv is None:
        return x, None
    return x, tuple(tuple(jnp.unstack(t)) for t in new_kv)
