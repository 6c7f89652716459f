"""MARFT training algorithms: critic, advantages, losses, optimisers and the jitted update.

Algorithms are chosen by name (`PPOConfig.algorithm`): "marft_a" (action-level PPO),
"marft_t" (token-level PPO), "grpo" (critic-free, group-relative) and "ippo" (MARFT-A with
IPPO reward shaping). See `update.make_update`.
"""

from marft_jax.algorithms.advantages import (ADVANTAGE_ESTIMATORS, REWARD_TRANSFORMS,
                                             CreditOrder)
from marft_jax.algorithms.config import ALGORITHMS, AlgorithmSpec, PPOConfig
from marft_jax.algorithms.losses import POLICY_LOSSES
from marft_jax.algorithms.state import TrainState, create_train_state, init_train_state
from marft_jax.algorithms.update import make_update

__all__ = [
    "ADVANTAGE_ESTIMATORS", "ALGORITHMS", "AlgorithmSpec", "CreditOrder", "POLICY_LOSSES",
    "PPOConfig", "REWARD_TRANSFORMS", "TrainState", "create_train_state", "init_train_state",
    "make_update",
]
