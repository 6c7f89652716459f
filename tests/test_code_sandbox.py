"""The code sandbox against hostile candidates: each costs its own sample its reward and
nothing else; correct programs pass, wrong ones fail, partial credit counts tests."""

import os
import socket
import time

import pytest

from marft_jax.envs.code.sandbox import (Job, SandboxLimits, grade_batch, run_in_sandbox,
                                         split_tests)
from marft_jax.errors import ConfigError

LIMITS = SandboxLimits(timeout_s=1.5, cpu_s=2, memory_mb=512, max_output_bytes=4096)
SUITE = split_tests("def check(candidate):\n"
                    "    assert candidate(1) == 2\n"
                    "    assert candidate(2) == 3\n"
                    "    assert candidate(0) == 1\n", "inc")
CORRECT = "def inc(x):\n    return x + 1\n"


def run(program, suite=SUITE, limits=LIMITS):
    return run_in_sandbox(program, suite, "inc", limits)


def test_correct_program_passes_and_wrong_one_fails():
    good = run(CORRECT)
    assert (good.passed, good.total, good.status, good.fraction, good.ok) == \
        (3, 3, "passed", 1.0, True)
    bad = run("def inc(x):\n    return x - 1\n")
    assert (bad.passed, bad.status, bad.fraction, bad.ok) == (0, "failed", 0.0, False)


def test_partial_credit_counts_each_test():
    result = run("def inc(x):\n    return x + 1 if x else 7\n")
    assert (result.passed, result.total, result.status) == (2, 3, "failed")
    assert result.fraction == pytest.approx(2 / 3)


def test_split_tests_counts_asserts_and_keeps_setup_in_order():
    suite = split_tests("import math\nX = 2\n\ndef check(f):\n    y = X\n"
                        "    assert f(y) == 3\n    for i in range(3):\n"
                        "        assert f(i) == i + 1\n", "inc")
    assert suite.num_tests == 2 and "X = 2" in suite.preamble
    assert [is_test for is_test, _ in suite.steps] == [False, False, True, True]
    assert run(CORRECT, suite).status == "passed"
    with pytest.raises(ConfigError, match="no assert"):
        split_tests("def check(candidate):\n    pass\n")
    with pytest.raises(ConfigError, match="does not parse"):
        split_tests("def check(:\n")


def test_crash_keeps_the_tests_already_passed():
    result = run("import os\ndef inc(x):\n    if x == 0:\n        os.abort()\n"
                 "    return x + 1\n")
    assert (result.passed, result.status) == (2, "crashed")
    assert run("raise SystemExit(3)\n").status == "load_error"
    assert run("def inc(x) return x\n").passed == 0  # a syntax error
    assert run("").status == "no_code"


def test_infinite_loop_is_killed_at_the_timeout():
    start = time.monotonic()
    result = run("def inc(x):\n    while x == 0:\n        pass\n    return x + 1\n")
    assert result.status == "timeout" and result.passed == 2
    assert time.monotonic() - start < LIMITS.timeout_s + 2.0


def test_fork_bomb_is_bounded():
    start = time.monotonic()
    result = run("import os\nwhile True:\n    os.fork()\n")
    assert result.passed == 0 and result.status in ("load_error", "crashed", "timeout")
    assert time.monotonic() - start < LIMITS.timeout_s + 2.0
    assert "not allowed" in result.stderr or result.status != "load_error"


def test_huge_print_is_capped():
    result = run("def inc(x):\n    print('x' * 20_000_000)\n    return x + 1\n")
    assert result.status == "passed"
    assert len(result.stdout) <= LIMITS.max_output_bytes


def test_memory_bomb_fails_only_itself():
    assert run("big = bytearray(4 << 30)\ndef inc(x):\n    return x + 1\n").passed == 0


def test_writing_outside_is_refused_and_the_directory_removed(tmp_path):
    target = tmp_path / "escape.txt"
    program = (f"import os\nprint(os.getcwd())\n"
               f"def inc(x):\n    open({str(target)!r}, 'w').write('x')\n    return x + 1\n")
    result = run(program)
    assert result.passed == 0 and not target.exists()
    workdir = result.stdout.strip()
    assert workdir and not os.path.exists(workdir)
    # writing inside its own directory is fine
    inside = run("def inc(x):\n    open('scratch.txt', 'w').write('x')\n    return x + 1\n")
    assert inside.status == "passed"


def test_network_is_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    result = run(f"import socket\ndef inc(x):\n"
                 f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n"
                 f"    return x + 1\n")
    server.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing reached the listening socket
        server.accept()
    server.close()
    assert result.passed == 0 and "not allowed" in result.stderr


def test_limits_are_set_in_the_child():
    suite = split_tests("def check(candidate):\n    assert candidate(0)\n", "probe")
    probe = ("import os, resource\ndef probe(_):\n"
             "    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]\n"
             "    fsize = resource.getrlimit(resource.RLIMIT_FSIZE)[0]\n"
             "    return nproc == 64 and fsize == 16 << 20 and os.getuid() != 0\n")
    assert run_in_sandbox(probe, suite, "probe", LIMITS).status == "passed"


def test_parallel_batch_is_bounded_and_isolated():
    loop = "def inc(x):\n    while True:\n        pass\n"
    jobs = [Job(loop, SUITE, "inc")] * 4 + [Job(CORRECT, SUITE, "inc")] * 4
    start = time.monotonic()
    results = grade_batch(jobs, SandboxLimits(timeout_s=1.0, cpu_s=2), workers=4)
    elapsed = time.monotonic() - start
    assert [r.status for r in results] == ["timeout"] * 4 + ["passed"] * 4
    assert elapsed < 3.5  # the four loops ran side by side, not one after another
    with pytest.raises(ConfigError):
        grade_batch(jobs, workers=0)
