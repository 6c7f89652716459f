"""`python experiments/repro_study.py ...`: the same as `marft-study` (see `marft_jax/cli/study.py`)."""

from marft_jax.cli.study import main

if __name__ == "__main__":
    main()
