"""The task registry: a task kind is one entry, and the config, the setup and the
seed-vmapped study runner all read it."""

import dataclasses
import importlib

import pytest

from marft_jax.envs import registry
from marft_jax.errors import ConfigError
from marft_jax.training.config import finalize
from marft_jax.training.seed_vmap import can_vmap_seeds
from marft_jax.training.setup import build_setup


@pytest.fixture
def toy_task():
    """A new kind registered from outside the package: the token game under another name,
    with its own field check."""
    built = []

    def build(exp, tokenizer):
        built.append(tokenizer)
        return registry.get_task("tokens").build(exp, tokenizer)

    def check(task):
        if task.num_symbols > 6:
            raise ConfigError("config field 'task.num_symbols': the toy has at most 6")

    tokens = registry.get_task("tokens")
    spec = registry.register_task(dataclasses.replace(tokens, name="toy", build=build,
                                                      check=check))
    yield spec, built
    registry._TASKS.pop("toy")


def _config(kind):
    config = importlib.import_module("configs.tiny_cpu").get_config()
    config.task.kind = kind
    return config


def test_a_registered_task_is_accepted_checked_built_and_vmapped(toy_task):
    spec, built = toy_task
    assert "toy" in registry.task_names()
    exp = finalize(_config("toy"))
    assert can_vmap_seeds(exp)
    setup = build_setup(exp)
    assert built == [None]  # JAX-native: no tokenizer
    assert setup.train.num_problems == registry.get_task("tokens").build(exp, None) \
        .train.num_problems
    bad = _config("toy")
    bad.task.num_symbols = 8
    with pytest.raises(ConfigError, match="task.num_symbols"):
        finalize(bad)


def test_unknown_task_kind_names_the_field_and_the_choices():
    with pytest.raises(ConfigError, match=r"'task.kind': 'chess' is not one of \[.*'code'"):
        finalize(_config("chess"))
    assert not can_vmap_seeds(finalize(importlib.import_module("configs.code_cpu")
                                       .get_config()))
