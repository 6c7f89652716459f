"""`python experiments/generate.py ...`: the same as `marft-generate` (see `marft_jax/cli/generate.py`)."""

from marft_jax.cli.generate import main

if __name__ == "__main__":
    main()
