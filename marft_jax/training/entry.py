"""Shared plumbing of the absl entry points: finalize, run directory, one-line errors."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import ml_collections

from marft_jax.errors import ConfigError

if TYPE_CHECKING:
    from marft_jax.training.config import Experiment


class _QuietLibraries(logging.Filter):
    """Drops INFO records of chatty libraries (Orbax's per-save lines, backend probing)."""

    NOISY = ("orbax", "xla_bridge", "tensorboardX")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not any(n in record.pathname for n in self.NOISY)


def parse_flags(argv: list[str]) -> list[str]:
    """`absl.app.run`'s `flags_parser`: a bad command line exits 2 with one line.

    A value that does not convert (`--config.ppo.lr_actor=abc`), an unknown flag or config
    field (`--config.ppo.nonexistent=1`) or a config file that does not load would
    otherwise end in absl's usage text (exit 1) or a traceback.
    """
    from absl import flags

    try:
        rest = flags.FLAGS(argv)
        if "config" in flags.FLAGS:  # a config file that failed to load raises on access
            getattr(flags.FLAGS["config"].value, "keys", None)
        return rest
    except flags.Error as e:
        fail_command_line(str(e).splitlines()[0] if str(e).strip() else type(e).__name__)
    except (KeyError, AttributeError) as e:  # ml_collections: no such config field
        name = str(e).strip("'\"")
        bad = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")
               and name in a.split("=", 1)[0].split(".")]
        fail_command_line(f"flag {bad[0] if bad else name}: no config field {name!r}")
    except Exception as e:  # noqa: BLE001 - a config file that is missing or raises
        fail_command_line(f"flag --config: {e}")
    return []  # not reached


def fail_command_line(message: str) -> None:
    """Prints `error: <message>` (one line) and exits with code 2."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def one_line_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Turns a `ConfigError` (and any of `kinds`) raised inside into `fail_command_line`.

    Args:
        *kinds: further exception types that mean bad input (e.g. `ValueError`).
    """
    try:
        yield
    except (ConfigError, *kinds) as e:
        fail_command_line(str(e))


def put_project_on_path() -> None:
    """Puts the project root on `sys.path`, so `configs` imports wherever the command runs
    (config files load by path and import each other as `configs.<name>`, e.g.
    `configs/token_bench.py`)."""
    from marft_jax.paths import project_root

    root = str(project_root())
    if root not in sys.path:
        sys.path.insert(0, root)


def run_app(main: Callable, module_name: str, doc: str | None, **kwargs) -> None:
    """`absl.app.run(main)` for a command of `marft_jax.cli`, run as a console script or
    through its `experiments/<script>.py` wrapper alike.

    The command module's docstring becomes the usage text and its flags the ones `--help`
    lists (absl takes both from `__main__`), and `configs` imports (`put_project_on_path`).

    Args:
        main: the absl main, `main(argv)`.
        module_name: the command module's `__name__`.
        doc: the command module's docstring.
        **kwargs: passed on to `absl.app.run` (e.g. `flags_parser=parse_flags`).
    """
    from absl import app, flags

    put_project_on_path()
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)  # absl's main module key
    sys.modules["__main__"].__doc__ = doc
    app.run(main, **kwargs)


def quiet_library_logs() -> None:
    """Installs `_QuietLibraries` on absl's handler."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_QuietLibraries())


def default_run_dir(exp: Experiment) -> Path:
    """`<output_dir>/<run_name>`, or a name from team, algorithm, seed and the time."""
    name = exp.train.run_name or (
        f"{Path(exp.team.source).stem}_{exp.ppo.algorithm}_seed{exp.seed}_"
        f"{time.strftime('%Y%m%d-%H%M%S')}")
    return Path(exp.train.output_dir) / name


def run_entry(config: ml_collections.ConfigDict, run_dir: str | None, resume: bool,
              job: Callable, build: Callable | None = None) -> int:
    """Finalizes `config`, prepares the run directory and calls `job(experiment, run_dir,
    built)`.

    `build(experiment)` (e.g. loading the model and the tasks) runs before anything is
    written, so a start that fails on bad input leaves no run directory behind (a
    corrected retry is not refused); `built` is its result (None without `build`). A
    `ConfigError` anywhere becomes one line on stderr and exit code 2.
    """
    from marft_jax.parallel import is_main_process, plan_for, sync
    from marft_jax.training.config import finalize
    from marft_jax.training.run_dir import prepare_run_dir

    quiet_library_logs()
    with one_line_errors():
        exp = finalize(config)
        plan_for(exp.mesh)  # the mesh fits the devices, before anything is written
        if resume and run_dir is None and not exp.train.run_name:
            raise ConfigError("--resume needs --run_dir (or config.train.run_name)")
        path = Path(run_dir) if run_dir else default_run_dir(exp)
        if resume and not (path / "config.json").exists():
            raise ConfigError(f"{path}: no run to resume (config.json is missing)")
        built = build(exp) if build is not None else None
        if is_main_process():  # multi-process runs: one writer, the others wait for it
            prepare_run_dir(config, path, resume)
        sync("run_dir")
        job(exp, path, built)
    return 0


def run_tool(config: ml_collections.ConfigDict, job: Callable) -> int:
    """Finalizes `config` and calls `job(experiment)`, for entry points that read a run
    rather than write one (evaluation, export).

    A `ConfigError` anywhere becomes one line on stderr and exit code 2, as in `run_entry`.
    """
    from marft_jax.training.config import finalize

    quiet_library_logs()
    with one_line_errors():
        job(finalize(config))
    return 0
