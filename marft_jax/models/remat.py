"""Rematerialisation of the decoder layers in differentiated passes (`ppo.remat`).

Without it, the backward pass of the update keeps every layer's intermediates alive (the
attention scores alone are `[rows, heads, T, T]` per layer), which is what makes the
SmolLM2 update need ~10 GB. With a policy, the layers run as one `lax.scan` over their
stacked parameters whose body is `jax.checkpoint`ed: between the forward and the backward
pass only the scan's carry (each layer's input, `[rows, T, hidden]`) and what the policy
saves are kept, and the backward recomputes one layer at a time.

Why a scan and not `jax.checkpoint` around each unrolled layer: XLA's CPU pipeline removes
optimisation barriers before common-subexpression elimination, so a checkpointed layer's
recomputation is merged back into the forward pass and nothing is saved (measured with
`memory_analysis()` on SmolLM2's shapes: 225 MB a layer either way; a `custom_vjp` whose
backward ties the recomputation to the cotangent with `lax.optimization_barrier` is merged
the same way). A loop body is never merged with the code outside it. The price of the scan
is one stacked copy of the layer weights per forward call (~425 MB for SmolLM2 in float32,
alive during that forward and backward) and about one more forward pass of compute.

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
    splits = [nnx.split(layer) for layer in layers]
    graphdef = splits[0][0]
    if any(g != graphdef for g, _ in splits[1:]):
        raise ValueError("scan_layers needs layers of one structure")
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(s for _, s in splits))

    kv = None if cache is None else jax.tree.map(lambda *xs: jnp.stack(xs), *zip(*cache))

    def body(h, layer):
        state, layer_kv = layer
        return nnx.merge(graphdef, state)(h, *args, layer_kv)

    x, new_kv = jax.lax.scan(jax.checkpoint(body, policy=policy, prevent_cse=False), x,
                             (stacked, kv))
    if new_kv is None:
        return x, None
    return x, tuple(tuple(jnp.unstack(t)) for t in new_kv)
