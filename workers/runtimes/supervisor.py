"""`python -m workers.runtimes.supervisor --parent PID [--grace S] [--cpus 0,1] -- ENGINE ARGV...`

Ties an engine's whole process tree to the job that started it. The supervisor leads the
engine's process group (the runtime starts it in a new session) and:

- asks the kernel for SIGTERM when its parent (the worker's pool process) dies, however
  it dies (OOM kill, Celery's hard time limit, SIGKILL): `PR_SET_PDEATHSIG`;
- is a child subreaper, so helpers the engine forks and orphans (tokenizer, detokenizer,
  tensor-parallel ranks) are re-parented to it rather than to init;
- on SIGTERM, or when the engine exits by itself, terminates every process of its group
  and every adopted descendant, SIGKILL after the grace period, and exits with the
  engine's exit status (128 + signal when it was stopped), which the runtime reads to
  classify failures.

Standard library only, so it starts in a few tens of milliseconds.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from typing import Callable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def prctl(option: int, value: int) -> None:
    """prctl(2), for the parent-death signal and the subreaper flag (the fork server uses it too)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _ours() -> list[int]:
    """Live processes of our group, and descendants re-parented to us, except ourselves."""
    me, group = os.getpid(), os.getpgrp()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()
        if fields[0] != "Z" and (int(fields[2]) == group or int(fields[1]) == me):
            found.append(int(entry))
    return found


def _reap() -> bool:
    """Collect exited children (adopted ones included) so they do not linger as zombies.
    True when none is left: then nothing of ours is (our group's members are all our
    descendants, and as a subreaper we adopt every one whose parent dies), which saves a
    scan of /proc on every stop."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False


def _wait_exits(pids: list[int], timeout: float) -> None:
    """Until each of `pids` has exited (or `timeout` passed), woken by the kernel as each one
    exits (a pidfd turns readable) rather than by polling: a stop is on the way to freeing the
    engine's GPUs, and a poll interval would be added to every experiment."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except OSError:  # gone already
            continue
    deadline = time.monotonic() + timeout
    try:
        while fds and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(fds, [], [], left)
            for fd in ready:
                fds.remove(fd)
                os.close(fd)
    finally:
        for fd in fds:
            os.close(fd)


def _terminate_all(grace: float) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = [] if _reap() else _ours()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        _wait_exits(pids, wait)
        while time.monotonic() < deadline:  # and for any that appeared meanwhile
            if _reap() or not _ours():
                return
            time.sleep(0.05)


def supervise(start_engine: Callable[[], int], parent: int, grace: float) -> int:
    """Lead the engine's group as described above: `start_engine()` starts the engine as our
    child (sharing our group and output) and returns its pid; returns the exit status to
    report. Also run in-process by the simulated engines' fork server
    (workers.runtimes.forkserver), whose forked child plays this part."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    code = 128 + signal.SIGTERM
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the kernel could watch it for us
            return code
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        try:
            engine = start_engine()
        except OSError as exc:
            print(f"cannot start the engine: {exc}", file=sys.stderr, flush=True)
            return 127
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == engine:
                exit_code = os.waitstatus_to_exitcode(status)
                code = exit_code if exit_code >= 0 else 128 - exit_code
                break
    except _Stop:
        pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        _terminate_all(grace)
    return code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.runtimes.supervisor")
    parser.add_argument("--parent", type=int, required=True, help="pid whose death ends the engine")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--cpus", help="CPUs the engine may run on, e.g. 0,1 (a CPU device's; inherited by "
                                       "every process the engine starts)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no engine command given")
    if args.cpus:  # inherited by the engine and everything it starts
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    started: list[subprocess.Popen] = []

    def start() -> int:
        started.append(subprocess.Popen(command))  # same group and output as us
        return started[0].pid

    return supervise(start, args.parent, args.grace)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
