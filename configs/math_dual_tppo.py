"""As math_dual_appo.py, with token-level PPO (MARFT-T)."""

from configs.math_dual_appo import get_config as appo_config


def get_config():
    c = appo_config()
    c.ppo.algorithm = "marft_t"
    return c
