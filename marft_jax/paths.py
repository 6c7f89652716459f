"""Where the project and the shared data live."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "MARFT_JAX_DATA"


def project_root() -> Path:
    """The project root (the folder holding `marft_jax/`, `configs/` and `experiments/`)."""
    return Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The shared data root: `$MARFT_JAX_DATA`, else `../shared/data` beside the project."""
    override = os.environ.get(DATA_ENV_VAR)
    if override:
        return Path(override).expanduser()
    return project_root().parent / "shared" / "data"
