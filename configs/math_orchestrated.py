"""The orchestrated math team (`configs/profiles/math_orchestrated.json`) on SmolLM2 with
MARFT-A: each round the orchestrator calls the solver and/or the checker
(`<call>solver</call>`, `<call>checker</call>`, parsed on the host between waves) or ends
the episode (`<done/>`); a response without a tag calls the solver (`default_calls`).
Two-round episodes, so a wrong first answer can be checked or retried. Otherwise the main
job's settings (`configs/default.py`). Not measured yet (see BUILD_NOTES.md).
"""

from configs.default import get_config as default_config


def get_config():
    c = default_config()
    c.team.profiles = "math_orchestrated"
    c.rollout.update(num_rounds=2, horizon=2)
    return c
