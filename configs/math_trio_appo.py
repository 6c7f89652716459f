"""Reference trio team (reasoner -> actor (answers) -> verifier) with MARFT-A on MATH.

As in the reference, the score goes to the last decision (the verifier) by default even
though the actor answers; --config.rollout.reward_placement=answering rewards the actor.
"""

from configs.math_dual_appo import get_config as dual_config


def get_config():
    c = dual_config()
    c.team.profiles = "math_trio"
    return c
