"""A persistent sympy worker process with a hard per-call timeout.

The symbolic comparison can run for ever (the reference grader has no timeout and a
pathological answer hangs the rollout), so it runs in a child process: a plain
``python -m marft_jax.envs.math._serve`` subprocess that talks JSON lines over pipes. A reply
that is late gets the child SIGKILLed, which always works (no cooperation from sympy needed);
the next call starts a fresh child. A subprocess (not ``multiprocessing`` with ``fork``) keeps
the worker clear of the parent's threads (JAX's) and does not re-import the parent's
``__main__``.

The worker starts lazily on the first symbolic comparison; its start-up (about half a
second, mostly importing sympy) is not counted against the per-call timeout. After a kill
the replacement is launched at once and its readiness awaited on the next call.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

_PROJECT_ROOT = Path(__file__).resolve().parents[3]
STARTUP_TIMEOUT_S = 120.0
DEFAULT_MEMORY_LIMIT_MB = 4096


class WorkerStartError(RuntimeError):
    """The sympy worker process could not be started."""


class SympyWorker:
    """One child process answering ``symbolic_equal`` requests (or, with ``backend=
    "math_verify"``, ``math_verify.verify`` on a response), restarted after a timeout.

    Thread-safe: calls are serialised with a lock. Safe across ``fork``: a forked parent
    starts its own child instead of sharing the pipes.

    Attributes:
        memory_limit_mb: address-space cap of the child in MiB (0 = none).
        restarts: how many times a child was killed or found dead and replaced.
    """

    def __init__(self, memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
                 backend: str = "sympy"):
        self.memory_limit_mb = memory_limit_mb
        self.backend = backend
        self.restarts = 0
        self._process: subprocess.Popen | None = None
        self._owner_pid = os.getpid()
        self._buffer = b""
        self._ready = False
        self._lock = threading.Lock()

    def compare(self, prediction: str, reference: str, timeout_s: float) -> bool | None:
        """Run ``symbolic_equal(prediction, reference)`` in the child.

        Args:
            prediction: normalised LaTeX answer.
            reference: normalised LaTeX ground truth.
            timeout_s: hard limit on the comparison itself, in seconds.

        Returns:
            The child's answer, or None when it did not answer in time (the child is then
            killed, and a replacement is launched at once so that its start-up overlaps the
            caller's next work) or died while answering.

        Raises:
            WorkerStartError: if a child cannot be started at all.
        """
        with self._lock:
            process = self._ensure_started()
            request = json.dumps([prediction, reference]).encode() + b"\n"
            try:
                process.stdin.write(request)
                process.stdin.flush()
            except OSError:
                self._replace()
                return None
            reply = self._read_line(time.monotonic() + max(timeout_s, 0.0))
            try:
                answer = None if reply is None else json.loads(reply)
            except ValueError:
                answer = None
            if not isinstance(answer, bool):
                self._replace()
                return None
            return answer

    def close(self) -> None:
        """Stop the child (if any); a later call starts a new one."""
        with self._lock:
            self._kill(count=False)

    @property
    def pid(self) -> int | None:
        """Process id of the running child, or None."""
        alive = self._process is not None and self._process.poll() is None
        return self._process.pid if alive and self._owner_pid == os.getpid() else None

    def _spawn(self) -> None:
        """Launch a child; its "ready" line is read by ``_ensure_started``."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_PROJECT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "marft_jax.envs.math._serve", str(self.memory_limit_mb),
                 self.backend],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=env, bufsize=0, close_fds=True)
        except OSError as error:
            self._process = None
            raise WorkerStartError(f"sympy worker failed to start: {error}") from error
        self._buffer, self._ready = b"", False

    def _replace(self) -> None:
        """Kill the child after a timeout or a crash and launch its replacement."""
        self._kill()
        try:
            self._spawn()
        except WorkerStartError:
            pass  # the next call retries and reports the error

    def _ensure_started(self) -> subprocess.Popen:
        if self._owner_pid != os.getpid():  # forked: the pipes belong to the parent
            self._process, self._buffer, self._owner_pid = None, b"", os.getpid()
        if self._process is not None and self._process.poll() is not None:
            self._kill()  # died since the last call (e.g. after a MemoryError)
        if self._process is None:
            self._spawn()
        if not self._ready:
            reply = self._read_line(time.monotonic() + STARTUP_TIMEOUT_S)
            if reply != b'"ready"':
                self._kill(count=False)
                detail = reply.decode(errors="replace") if reply else "no reply"
                raise WorkerStartError(f"sympy worker failed to start: {detail}")
            self._ready = True
        return self._process

    def _read_line(self, deadline: float) -> bytes | None:
        """One line from the child before ``deadline``; None on timeout or end of file."""
        stdout = self._process.stdout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([stdout], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.strip()

    def _kill(self, count: bool = True) -> None:
        process, self._process, self._buffer, self._ready = self._process, None, b"", False
        if process is None:
            return
        if count:
            self.restarts += 1
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass


_WORKERS: dict[str, SympyWorker] = {}
_DEFAULT_LOCK = threading.Lock()


def default_worker(backend: str = "sympy") -> SympyWorker:
    """The process-wide worker of a backend used by the grader (created on first use)."""
    with _DEFAULT_LOCK:
        if backend not in _WORKERS:
            _WORKERS[backend] = SympyWorker(backend=backend)
            atexit.register(_WORKERS[backend].close)
        return _WORKERS[backend]


def math_verify_worker() -> SympyWorker:
    """The process-wide ``math-verify`` worker (imports it once, at start-up)."""
    return default_worker("math_verify")
