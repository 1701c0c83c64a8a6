"""The image's HEALTHCHECK: one image runs every role, so find which one this container runs.

- `autotuner web`: GET /healthz on its port (200 only when the database and broker answer).
- `autotuner worker ... --group G`: `autotuner ping gpu-G@HOST` (the Celery worker answers
  through the broker). Without --group the node name depends on the GPUs found, so the
  process running is all that is checked (Kubernetes manifests always pass --group).
- anything else (coordinator, Flower): the process is running, which Docker already knows.

Exit 0 healthy, 1 unhealthy, with one line saying why.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path


def _command() -> list[str]:
    """The argv of the container's main autotuner process (PID 1, or under an init)."""
    for proc in sorted(Path("/proc").glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if any(Path(a).name == "autotuner" for a in args[:2]) and "autotuner-healthcheck" not in " ".join(args):
            return args[[Path(a).name for a in args].index("autotuner") + 1:]
    return []


def _option(args: list[str], name: str, default: str | None = None) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def main() -> int:
    args = _command()
    role = args[0] if args else ""
    if role == "web":
        url = f"http://127.0.0.1:{_option(args, '--port', '8000')}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=8) as resp:
                print(f"{url}: {resp.status}")
                return 0
        except urllib.error.HTTPError as exc:
            print(f"{url}: {exc.code} {exc.read(300).decode(errors='replace')}")
        except OSError as exc:
            print(f"{url}: {exc}")
        return 1
    group = _option(args, "--group")
    if role == "worker" and group:
        host = os.environ.get("AUTOTUNER_HOST_NAME") or socket.gethostname()
        return subprocess.call(["autotuner", "ping", f"gpu-{group}@{host}", "--timeout", "5"])
    print(f"{role}: running" if role else "not an autotuner role (Flower?): nothing more to check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
