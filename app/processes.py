"""Processes and ports of this host: the few facts the stack, the store's liveness checks,
the engine runtimes and the simulated engine all need (standard library only)."""
from __future__ import annotations

import ctypes
import os
import signal
import socket


def free_port() -> int:
    """A TCP port nobody listens on right now on 127.0.0.1 (the caller binds it next; a
    clash in that small window shows up as the server failing to start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int | None) -> bool:
    """True while a process with that pid runs on this host. A zombie (exited, not yet
    collected by its parent) is not alive: it holds no GPU and serves nothing."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: the signal check is all we can say
    return state != b"Z"


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies, however it dies
    (SIGKILL included): children of the embedded stack and Celery's pool processes must not
    outlive the process that owns them. Linux only; elsewhere a no-op."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
