"""Engines for lifetime tests: real processes that behave like an inference server's tree.

`family_engine` starts a helper in its own process group and one that leaves the group with
setsid (as engines' tokenizer and rank processes may), writes every pid to a file, and
sleeps; it is what an engine that must be taken down whole looks like from outside.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from app.domain.engines import EngineSpec

FAMILY_SCRIPT = r"""
import json, os, subprocess, sys, time
out = sys.argv[1]
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
escaped = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(3600)"])
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump({"engine": os.getpid(), "helper": helper.pid, "escaped": escaped.pid}, f)
os.replace(tmp, out)
time.sleep(3600)
"""


def family_engine(pid_file: Path) -> EngineSpec:
    """A launcher whose process command runs FAMILY_SCRIPT, reporting pids to `pid_file`."""
    return EngineSpec(name="family", label="process family", vocabulary=None,
                      process_command=(sys.executable, "-c", FAMILY_SCRIPT, str(pid_file)))


def read_pids(pid_file: Path, timeout: float = 30.0) -> dict[str, int]:
    """The family's pids, once the engine has written them (polling the file it writes)."""
    deadline = time.monotonic() + timeout
    while not pid_file.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the engine did not write {pid_file}")
        time.sleep(0.02)
    return json.loads(pid_file.read_text())


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, already dead but not yet collected, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rfind(")") + 2:].split()[0] != "Z"


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def wait_gone(pids, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise AssertionError(f"still running: {[p for p in pids if alive(p)]}")
        time.sleep(0.05)


def kill_quietly(pids) -> None:
    """Test clean-up: SIGKILL whatever a failed test left behind, by pid."""
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
