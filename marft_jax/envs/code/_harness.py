"""The sandboxed child: limits itself, then runs a candidate program and its tests.

Run by `sandbox.py` as ``python -I -c <this file's source>`` with a JSON spec on stdin; it
never imports anything from the project. Order matters: the spec is read, the resource
limits are set, the network namespace is left (where the kernel allows it), privileges are
dropped (when started as root), the audit hook is installed, and only then is the
candidate's code compiled and run.

Each test's outcome is written as one line, ``P <i>`` or ``F <i>``, to the result pipe (file
descriptor ``spec["result_fd"]``) as soon as it is known, so a later crash or timeout keeps
the tests already passed. ``L`` means the program and preamble loaded, ``D`` that every test
ran. The pipe is not hidden from the candidate: this harness limits accidents and naive
escapes; it is not a boundary against code written to forge its own results.
"""

import json
import os
import resource
import signal
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# Audit events refused outright: new processes, network, privileges, native code.
BLOCKED = frozenset({
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.kill", "os.killpg", "subprocess.Popen", "pty.spawn", "socket.__new__",
    "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
    "socket.gethostbyname", "os.chmod", "os.chown", "os.chdir", "os.chroot", "os.setuid",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
    "sys.addaudithook", "os.putenv", "os.unsetenv", "shutil.rmtree", "os.symlink", "os.link",
})
# Events that modify a path: allowed inside the working directory only.
PATH_EVENTS = frozenset({"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.truncate",
                         "os.utime", "os.replace"})


def set_limits(spec):
    """CPU seconds, address space, processes, file size; no core dumps."""
    mb = 1 << 20
    limits = [(resource.RLIMIT_CPU, spec["cpu_s"], spec["cpu_s"] + 1),
              (resource.RLIMIT_NPROC, spec["max_processes"], spec["max_processes"]),
              (resource.RLIMIT_FSIZE, spec["max_file_mb"] * mb, spec["max_file_mb"] * mb),
              (resource.RLIMIT_CORE, 0, 0)]
    if spec["memory_mb"]:
        limits.append((resource.RLIMIT_AS, spec["memory_mb"] * mb, spec["memory_mb"] * mb))
    for kind, soft, hard in limits:
        try:
            resource.setrlimit(kind, (soft, hard))
        except (ValueError, OSError):
            pass  # a hard limit already lower: keep it
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write raises, not kills


def leave_network():
    """A fresh network namespace (no interfaces up) where the kernel permits it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(0x40000000) == 0  # CLONE_NEWNET
    except Exception:  # noqa: BLE001 - best effort; the audit hook still refuses sockets
        return False


# Imported before privileges are dropped: as nobody, a stdlib under a private directory
# (e.g. a Python installed under root's home) cannot be read, so only these (and what they import) are available.
PRELOAD = ("math", "cmath", "random", "re", "string", "collections", "collections.abc",
           "itertools", "functools", "heapq", "bisect", "typing", "hashlib", "statistics",
           "fractions", "decimal", "copy", "operator", "json", "datetime", "time", "array",
           "dataclasses", "enum", "numbers", "textwrap", "unicodedata", "struct", "io",
           "socket", "encodings.idna", "traceback")


def drop_privileges():
    """As root, become nobody: file permissions then protect the rest of the machine and
    RLIMIT_NPROC applies (the kernel exempts root from it)."""
    if os.getuid() != 0:
        return
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def install_audit_hook(workdir):
    """Refuses `BLOCKED` events and writes outside `workdir` (PEP 578 hooks cannot be
    removed; native code could still bypass them, which is why ctypes is blocked)."""
    root = os.path.realpath(workdir) + os.sep
    realpath = os.path.realpath

    def inside(path):
        if isinstance(path, int):
            return True  # an already open descriptor
        try:
            path = os.fsdecode(path)
        except TypeError:
            return False
        return path == os.devnull or (realpath(path) + os.sep).startswith(root)

    def hook(event, args):
        if event in BLOCKED:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} is not allowed")
        elif event in PATH_EVENTS:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if not all(inside(p) for p in paths):
                raise PermissionError(f"sandbox: {event} outside the working directory")

    sys.addaudithook(hook)


def main():
    spec = json.loads(sys.stdin.read())
    out = spec["result_fd"]
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    set_limits(spec)
    leave_network()
    drop_privileges()
    install_audit_hook(os.getcwd())
    del spec["result_fd"]

    def report(line):
        os.write(out, (line + "\n").encode())

    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(spec["program"], "<candidate>", "exec"), namespace)
        exec(compile(spec["preamble"], "<tests>", "exec"), namespace)
        namespace["candidate"] = namespace[spec["entry_point"]]
    except BaseException as error:  # noqa: BLE001 - any failure to load fails every test
        print(f"sandbox: the program did not load: {type(error).__name__}: {error}",
              file=sys.stderr)
        return
    report("L")
    broken = False
    for i, (is_test, source) in enumerate(spec["steps"]):
        if broken:
            break
        try:
            exec(compile(source, f"<test {i}>", "exec"), namespace)
            ok = True
        except BaseException as error:  # noqa: BLE001 - a failed test, whatever it raised
            ok = False
            print(f"sandbox: step {i}: {type(error).__name__}: {error}"[:500], file=sys.stderr)
        if is_test:
            report(f"{'P' if ok else 'F'} {i}")
        elif not ok:
            broken = True  # set-up failed: the remaining tests cannot run
    report("D")


main()
