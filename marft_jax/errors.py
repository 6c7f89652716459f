"""Exception types raised for bad user input (configs, profiles, checkpoints, models)."""


class MarftError(Exception):
    """Base class of marft_jax's own errors."""


class ConfigError(MarftError, ValueError):
    """Bad user input: the message names the file and the field that is wrong.

    Entry points catch it, print its message as one line and exit with code 2.
    """
