"""Entry point of the sympy worker process (``python -m marft_jax.envs.math._serve``).

Protocol, one JSON value a line: after start-up the worker writes ``"ready"`` (or
``{"error": message}`` and exits); then for every request ``[prediction, reference]`` read
from stdin it writes ``true`` or ``false``. Argument 2 picks the comparison: "sympy"
(``symbolic_equal`` of two normalised answers) or "math_verify" (HF ``math-verify``:
``verify(parse("\\boxed{reference}"), parse(response))`` on a whole response).
The parent process kills it when a reply is late.
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


def _comparison(backend: str):
    """`compare(prediction, reference) -> bool` of a backend, imported now."""
    if backend == "math_verify":
        from math_verify import parse, verify

        def compare(response: str, reference: str) -> bool:
            # The parent's hard timeout bounds the call; math-verify's own (signal-based)
            # timeouts are switched off.
            gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=None)
            answer = parse(response, parsing_timeout=None)
            return bool(verify(gold, answer, timeout_seconds=None))
        return compare
    from marft_jax.envs.math.symbolic import symbolic_equal

    return symbolic_equal


def main(argv: list[str]) -> int:
    """Serve comparison requests until stdin closes."""
    try:
        import warnings

        warnings.simplefilter("ignore")
        compare = _comparison(argv[2] if len(argv) > 2 else "sympy")
        _limit_memory(int(argv[1]) if len(argv) > 1 else 0)
    except Exception as error:  # report any start-up failure to the parent, then stop
        _write({"error": f"{type(error).__name__}: {error}"})
        return 1
    sys.setrecursionlimit(10_000)
    _write("ready")
    for line in sys.stdin:
        try:
            prediction, reference = json.loads(line)
            _write(bool(compare(str(prediction), str(reference))))
        except MemoryError:
            _write(False)
            return 1
        except Exception:  # any sympy failure on odd input means "not shown equal"
            _write(False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
