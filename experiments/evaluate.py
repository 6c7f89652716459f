"""`python experiments/evaluate.py ...`: the same as `marft-evaluate` (see `marft_jax/cli/evaluate.py`)."""

from marft_jax.cli.evaluate import main

if __name__ == "__main__":
    main()
