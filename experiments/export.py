"""`python experiments/export.py ...`: the same as `marft-export` (see `marft_jax/cli/export.py`)."""

from marft_jax.cli.export import main

if __name__ == "__main__":
    main()
