"""Runs a candidate program against its unit tests in a separate, limited process.

Each candidate runs in its own ``python -I`` child (`_harness.py`) in a fresh temporary
working directory that is removed afterwards, with stdin from /dev/null and stdout/stderr
read through pipes of which at most `SandboxLimits.max_output_bytes` are kept (the rest is
drained and dropped, so a huge print costs neither memory nor a blocked child). A
wall-clock timeout SIGKILLs the child's whole process group (it runs in a new session).

What the child does to itself before any candidate code runs:

- resource limits (`resource.setrlimit`): CPU seconds, address space, number of processes
  (RLIMIT_NPROC, against fork bombs), file size (RLIMIT_FSIZE, against huge writes), no core
  dumps. They are set in the child's prelude rather than in a ``preexec_fn``: the grader
  runs under JAX, whose threads make ``preexec_fn`` unsafe (it can deadlock between fork and
  exec); the prelude is single-threaded and runs before the candidate's first line.
- a new network namespace (``unshare(CLONE_NEWNET)``) where the kernel allows it (root or
  CAP_SYS_ADMIN): no interface is up, so no connection can succeed.
- when started as root, it becomes ``nobody``: file permissions then protect the rest of
  the file system and RLIMIT_NPROC applies (the kernel exempts root from it).
- a PEP 578 audit hook that refuses new processes (fork, exec, subprocess, system),
  sockets, ctypes and writes / renames / deletions outside the working directory.

What is *not* isolated: the child shares the machine's kernel, CPU and file system (read
access follows the user's permissions: as a non-root user the candidate can read whatever
that user can); without root the network isolation is the audit hook alone, which native
code could bypass (ctypes is refused, but an installed C extension is not); the result pipe
is visible to the candidate, which could forge its own test results. This is a guard
against the accidents and naive escapes of generated code, not a security boundary against
a determined adversary: run untrusted code from strangers in a container or VM.
"""

from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from marft_jax.errors import ConfigError

_HARNESS = (Path(__file__).parent / "_harness.py").read_text(encoding="utf-8")
_NOBODY = 65534


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run.

    Attributes:
        timeout_s: wall-clock limit; the process group is killed after it.
        cpu_s: CPU seconds (RLIMIT_CPU; SIGXCPU, then SIGKILL one second later).
        memory_mb: address space in MiB (RLIMIT_AS); 0 = no limit.
        max_processes: RLIMIT_NPROC (counted per user, so it bounds all sandboxes together).
        max_file_mb: largest file the child may write (RLIMIT_FSIZE), in MiB.
        max_output_bytes: stdout and stderr kept, each.
    """

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 1024
    max_processes: int = 64
    max_file_mb: int = 16
    max_output_bytes: int = 16384

    def __post_init__(self):
        for name in ("timeout_s", "cpu_s", "max_processes", "max_file_mb", "max_output_bytes"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"sandbox limit '{name}' must be > 0, got "
                                  f"{getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class TestSuite:
    """Unit tests split into separately counted steps.

    Attributes:
        preamble: module-level code of the test file (imports, helpers, constants), run
            after the program; `candidate` is bound to the entry point after it.
        steps: `(is_test, source)` in order: the statements of `check(candidate)`; those
            holding an `assert` are tests, the others set-up (a failing set-up step fails
            every test after it).
    """

    __test__ = False  # not a pytest test class

    preamble: str
    steps: tuple[tuple[bool, str], ...]

    @property
    def num_tests(self) -> int:
        return sum(is_test for is_test, _ in self.steps)


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """The outcome of one candidate.

    Attributes:
        passed: tests passed.
        total: tests in the suite.
        status: "passed", "failed", "timeout", "crashed" (died before finishing its tests,
            e.g. killed for CPU or memory), "load_error" (the program or preamble raised,
            or the entry point is missing) or "no_code".
        stdout, stderr: the first `max_output_bytes` of each, decoded.
        seconds: wall-clock time of the run.
    """

    passed: int
    total: int
    status: str
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0

    @property
    def fraction(self) -> float:
        """Fraction of tests passed (the reward)."""
        return self.passed / self.total if self.total else 0.0

    @property
    def ok(self) -> bool:
        """Every test passed (the pass/fail score)."""
        return self.total > 0 and self.passed == self.total


def split_tests(test_code: str, entry_point: str = "candidate") -> TestSuite:
    """Splits HumanEval-style test code (a `check(candidate)` function) into steps.

    Every statement of `check`'s body that contains an `assert` is one test; other
    statements are set-up. Without a `check` function, each top-level statement holding an
    `assert` is a test (calling the function by `entry_point` or `candidate`).

    Raises:
        ConfigError: the test code does not parse or holds no assert.
    """
    try:
        module = ast.parse(test_code)
    except SyntaxError as error:
        raise ConfigError(f"test code does not parse: line {error.lineno}: {error.msg}") \
            from None
    check = next((n for n in module.body if isinstance(n, ast.FunctionDef)
                  and n.name == "check"), None)
    body = check.body if check is not None else [
        n for n in module.body if any(isinstance(x, ast.Assert) for x in ast.walk(n))]
    rest = [n for n in module.body if n is not check and n not in body]
    steps = tuple((any(isinstance(x, ast.Assert) for x in ast.walk(n)), ast.unparse(n))
                  for n in body)
    if check is not None and check.args.args and check.args.args[0].arg != "candidate":
        alias = f"{check.args.args[0].arg} = candidate"
        steps = ((False, alias),) + steps
    if not any(is_test for is_test, _ in steps):
        raise ConfigError("test code holds no assert statement")
    return TestSuite(preamble="\n".join(ast.unparse(n) for n in rest), steps=steps)


def run_in_sandbox(program: str, suite: TestSuite, entry_point: str,
                   limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Runs `program` and `suite` in a sandboxed child; never raises for the candidate's
    behaviour (a crash, a timeout or a hostile action only costs this result)."""
    total = suite.num_tests
    if not program.strip():
        return SandboxResult(0, total, "no_code")
    workdir = tempfile.mkdtemp(prefix="marft_code_")
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    try:
        if os.getuid() == 0:
            os.chown(workdir, _NOBODY, _NOBODY)  # the child drops to nobody
        spec = dict(program=program, preamble=suite.preamble, steps=suite.steps,
                    entry_point=entry_point, result_fd=write_fd, cpu_s=limits.cpu_s,
                    memory_mb=limits.memory_mb, max_processes=limits.max_processes,
                    max_file_mb=limits.max_file_mb)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
               "LANG": "C.UTF-8"}
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", _HARNESS], cwd=workdir, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(write_fd,), close_fds=True, start_new_session=True)
        os.close(write_fd)
        write_fd = -1
        try:
            process.stdin.write(json.dumps(spec).encode())
            process.stdin.close()
        except OSError:
            pass  # died at once; reported below
        outputs, timed_out = _collect(process, read_fd, limits, start + limits.timeout_s)
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        shutil.rmtree(workdir, ignore_errors=True)
    lines = outputs["result"].decode(errors="replace").split()
    passed = len({lines[j + 1] for j, tag in enumerate(lines[:-1]) if tag == "P"})
    passed = min(passed, total)
    if timed_out:
        status = "timeout"
    elif "L" not in lines:
        status = "load_error" if process.returncode == 0 else "crashed"
    elif "D" not in lines:
        status = "crashed"
    else:
        status = "passed" if passed == total else "failed"
    return SandboxResult(passed, total, status,
                         stdout=outputs["stdout"].decode(errors="replace"),
                         stderr=outputs["stderr"].decode(errors="replace"),
                         seconds=time.monotonic() - start)


def _collect(process: subprocess.Popen, result_fd: int, limits: SandboxLimits,
             deadline: float) -> tuple[dict[str, bytes], bool]:
    """Reads stdout, stderr and the result pipe until all close or the deadline passes;
    keeps `max_output_bytes` of each; kills the process group and reaps the child."""
    cap = limits.max_output_bytes
    kept = {"stdout": bytearray(), "stderr": bytearray(), "result": bytearray()}
    selector = selectors.DefaultSelector()
    selector.register(process.stdout.fileno(), selectors.EVENT_READ, "stdout")
    selector.register(process.stderr.fileno(), selectors.EVENT_READ, "stderr")
    selector.register(result_fd, selectors.EVENT_READ, "result")
    timed_out = False
    try:
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = kept[key.data]
                limit = cap if key.data != "result" else 1 << 20
                if len(buffer) < limit:
                    buffer += chunk[:limit - len(buffer)]
    finally:
        selector.close()
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the child and anything it started
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
        process.stdout.close()
        process.stderr.close()
    return {k: bytes(v) for k, v in kept.items()}, timed_out


@dataclasses.dataclass(frozen=True)
class Job:
    """One candidate to grade: a program, its tests and the function they call."""

    program: str
    suite: TestSuite
    entry_point: str


def grade_batch(jobs: Sequence[Job], limits: SandboxLimits = SandboxLimits(),
                workers: int = 4) -> list[SandboxResult]:
    """Runs every job in its own sandbox, at most `workers` at a time (results in order).

    The batch takes at most about `ceil(len(jobs) / workers) * limits.timeout_s` plus
    process start-up.
    """
    if workers < 1:
        raise ConfigError(f"sandbox workers must be ≥ 1, got {workers}")
    if len(jobs) <= 1 or workers == 1:
        return [run_in_sandbox(j.program, j.suite, j.entry_point, limits) for j in jobs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda j: run_in_sandbox(j.program, j.suite, j.entry_point,
                                                      limits), jobs))
