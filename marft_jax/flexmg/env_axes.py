"""Where the environment axis of each field of a rollout struct lies.

`Trajectory` and `GameState` declare, field by field, which array axis holds the
environments (`env_field`); `marft_jax.parallel.Plan` reads the declarations to split those
axes over the mesh, so a new field cannot be left out of the sharding silently: it must
declare an axis (or `None`, replicated) and `env_axes` refuses one that does not.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from flax import struct

ENV_AXIS = "env_axis"


class EnvAxis(NamedTuple):
    """The env axis of one field.

    Attributes:
        axis: the array axis that holds the environments; None = no env axis (replicated).
        rank: the array's number of dimensions.
    """

    axis: int | None
    rank: int


def env_field(axis: int | None, rank: int, **kwargs: Any):
    """A `flax.struct` pytree field whose env axis is `axis` of a rank-`rank` array.

    Args:
        axis: the environments' axis; None for a field without one (replicated).
        rank: the field's number of dimensions.
        **kwargs: passed on to `flax.struct.field` (e.g. `default`).
    """
    return struct.field(metadata={ENV_AXIS: EnvAxis(axis, rank)}, **kwargs)


def env_axes(cls: type) -> dict[str, EnvAxis]:
    """`{field name: EnvAxis}` for every pytree field of the struct class `cls`.

    Static fields (`pytree_node=False`) hold no arrays and are left out.

    Raises:
        TypeError: naming a pytree field that declares no env axis.
    """
    out = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("pytree_node", True):
            continue
        if ENV_AXIS not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} declares no env axis: declare it with "
                            f"env_field(axis, rank) (axis None: replicated)")
        out[f.name] = f.metadata[ENV_AXIS]
    return out
