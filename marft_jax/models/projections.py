"""The decoder layer's linear projections: one table that every name-based mapping reads.

Weight import and export (`weights`, `hf_export`, `peft_export`), the LoRA targets
(`config.LORA_TARGETS`) and the sharding rules (`marft_jax.parallel`) all derive their
projection names from `PROJECTIONS`, so the names are spelled once.
"""

from __future__ import annotations

from typing import NamedTuple


class Projection(NamedTuple):
    """Where one projection lives and how its kernel splits for tensor parallelism.

    Attributes:
        block: the layer's submodule that holds it (Hugging Face's module name).
        row_parallel: True when the kernel is `[in, hidden]` (output back to the hidden size:
            split on its input dimension); False for `[hidden, out]` (split on its output).
    """

    block: str
    row_parallel: bool


ATTENTION = "self_attn"
MLP = "mlp"
BLOCKS = (ATTENTION, MLP)

# Every projection of a decoder layer, in Hugging Face's order.
PROJECTIONS: dict[str, Projection] = {
    "q_proj": Projection(ATTENTION, row_parallel=False),
    "k_proj": Projection(ATTENTION, row_parallel=False),
    "v_proj": Projection(ATTENTION, row_parallel=False),
    "o_proj": Projection(ATTENTION, row_parallel=True),
    "gate_proj": Projection(MLP, row_parallel=False),
    "up_proj": Projection(MLP, row_parallel=False),
    "down_proj": Projection(MLP, row_parallel=True),
}


def block_of(proj: str) -> str:
    """The submodule (`self_attn` or `mlp`) that holds projection `proj`.

    Raises:
        KeyError: for a name that is not a projection.
    """
    return PROJECTIONS[proj].block
