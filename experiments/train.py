"""`python experiments/train.py ...`: the same as `marft-train` (see `marft_jax/cli/train.py`)."""

from marft_jax.cli.train import main

if __name__ == "__main__":
    main()
