"""Entry point of the sympy worker process (``python -m marft_jax.envs.math._serve``).

Protocol, one JSON value a line: after start-up the worker writes ``"ready"`` (or
``{"error": message}`` and exits); then for every request ``[prediction, reference]`` read
from stdin it writes ``true`` or ``false``. The parent process kills it when a reply is late.
The address space is capped (argument 1, MiB; 0 = no cap) so a runaway expansion fails with
MemoryError instead of swapping the machine; after a MemoryError the worker answers
``false`` and exits, and the parent starts a fresh one.
"""

from __future__ import annotations

import json
import sys


def _limit_memory(megabytes: int) -> None:
    """Cap the address space of this process (POSIX only; a no-op elsewhere)."""
    if megabytes <= 0:
        return
    try:
        import resource
    except ImportError:
        return
    limit = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _write(value) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    """Serve comparison requests until stdin closes."""
    try:
        import warnings

        warnings.simplefilter("ignore")
        from marft_jax.envs.math.symbolic import symbolic_equal

        _limit_memory(int(argv[1]) if len(argv) > 1 else 0)
    except Exception as error:  # report any start-up failure to the parent, then stop
        _write({"error": f"{type(error).__name__}: {error}"})
        return 1
    sys.setrecursionlimit(10_000)
    _write("ready")
    for line in sys.stdin:
        try:
            prediction, reference = json.loads(line)
            _write(bool(symbolic_equal(str(prediction), str(reference))))
        except MemoryError:
            _write(False)
            return 1
        except Exception:  # any sympy failure on odd input means "not shown equal"
            _write(False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
