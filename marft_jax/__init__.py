"""marft_jax: multi-agent reinforcement fine-tuning of LLM-based multi-agent systems in JAX."""

__version__ = "0.1.0"
