"""Process identity on Linux: find, recognise and stop an engine's process group.

A pid alone is not an identity: after a crash and a reboot, or after enough processes, the
same number names someone else's process. An engine is recorded as (boot id, process-group
id, start time of the group leader in clock ticks since boot), so the reaper only ever
signals the group it started, and never by name.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

_PROC = Path("/proc")


def boot_id() -> str:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    return raw[raw.rfind(")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22 of stat: starttime


def process_identity(pid: int) -> dict[str, Any]:
    """What to record for an engine whose group leader is `pid` (it leads its own group)."""
    return {"pid": pid, "pgid": pid, "start_ticks": start_ticks(pid), "boot_id": boot_id()}


def group_members(pgid: int, include_zombies: bool = False) -> list[int]:
    """Pids of live processes in process group `pgid`."""
    members = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and int(fields[2]) == pgid and (include_zombies or fields[0] != "Z"):
            members.append(int(entry.name))
    return members


def is_running(identity: dict[str, Any]) -> bool:
    """True while any process of the recorded engine's group is alive on this host.

    The group id cannot be reused while one of its members lives, so members of `pgid` are
    ours when the leader is gone; when the leader lives, its start time must match."""
    if identity.get("boot_id") and identity["boot_id"] != boot_id():
        return False  # the host rebooted since: nothing of that engine survives
    pgid = int(identity["pgid"])
    try:
        os.killpg(pgid, 0)  # one system call for the common answer, "nothing of it is left"
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's group: the scan below decides
    leader = start_ticks(pgid)
    if leader is not None and identity.get("start_ticks") is not None and leader != identity["start_ticks"]:
        return False  # the pid now names another process that leads its own group
    return bool(group_members(pgid))


def stop_group(identity: dict[str, Any], grace: float = 10.0) -> bool:
    """SIGTERM the group's leader (the supervisor tears the engine down; without it, the
    whole group), then SIGKILL the whole group after `grace` seconds. Returns True once no
    process of it is left."""
    if not is_running(identity):
        return True
    pgid = int(identity["pgid"])
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            if sig == signal.SIGTERM and pgid in group_members(pgid):
                os.kill(pgid, sig)
            else:
                os.killpg(pgid, sig)
        except ProcessLookupError:
            return not is_running(identity)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not is_running(identity):
                return True
            time.sleep(0.05)
    return not is_running(identity)
