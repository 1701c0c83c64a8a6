"""A fork server for simulated engines: engines that cost milliseconds of CPU to start.

Why: a simulated engine started as `python -m app.tools.simengine` under `python -I
supervisor.py` costs two interpreter start-ups and aiohttp's import, about a quarter of a
CPU-second, and the scheduling benchmarks start many engines at once on two cores: they
measured the interpreter instead of the control plane. Here each process that starts
engines (a worker's pool process) starts one server that imports the simulator once; every
engine is then two forks of it, with the same guarantees as the process runtime's:

- the first fork is the supervisor (workers.runtimes.supervisor.supervise, in-process): it
  starts a new session, so it leads the engine's own process group (the identity recorded
  for the reaper is the same shape), takes the environment allow-list the runtime built
  (os.environ is replaced before the engine exists; the server itself is started with that
  allow-list's base, so no secret is in its memory to inherit), closes every inherited
  descriptor but the log, is a child subreaper, and tears its group down on SIGTERM;
- the second fork is the engine, which runs the simulator's `main` with its argv;
- death with the worker is a chain of parent-death signals: the server gets SIGKILL when the
  process that started it dies, and each supervisor SIGTERM when the server dies, so a
  SIGKILLed worker still takes every engine down (and each engine also watches the worker's
  pid itself, `--parent-pid`).

Protocol (one SEQPACKET socket pair per server): the owner sends JSON {argv, env, grace} with
two descriptors, the log file and one end of a status pair; the server answers {"pid": N}
or {"error": ...}, and when that supervisor exits writes its exit status to the status
socket and closes it (`ForkedProcess` reads it: a Popen look-alike for the runtime).
"""
from __future__ import annotations

import array
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from workers.runtimes.supervisor import PR_SET_PDEATHSIG, prctl, supervise

MODULE = "app.tools.simengine"
MAX_MESSAGE = 1 << 20


class ForkServerError(OSError):
    """The fork server could not be started or did not answer."""


class ForkedProcess:
    """What the process runtime needs of a Popen, for a supervisor the fork server started."""

    def __init__(self, pid: int, status: socket.socket) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._status = status

    def _read(self, timeout: float | None) -> int | None:
        if self.returncode is not None:
            return self.returncode
        ready, _, _ = select.select([self._status], [], [], timeout)
        if not ready:
            return None
        data = self._status.recv(64)
        # No status: the fork server died, and the supervisor with it (its parent-death signal).
        self.returncode = int(data) if data.strip() else 128 + signal.SIGTERM
        self._status.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._read(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._read(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"supervisor {self.pid}", timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # only while it is ours: a reaped pid may name someone else
            os.kill(self.pid, sig)


class ForkServerClient:
    """The owner's side: starts the server on first use, then asks it for engines."""

    def __init__(self, env: dict[str, str]) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.runtimes.forkserver", str(os.getpid()), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, close_fds=True,
                start_new_session=True)
        finally:
            theirs.close()
        self.sock = mine
        self.lock = threading.Lock()
        self.owner = os.getpid()

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    def _abandon(self) -> None:
        """End a server whose connection is out of step: a start that failed after its request
        was sent may still fork an engine, whose late answer the next start would take as its
        own. Killing the server ends what it forked (each supervisor's parent-death signal),
        and client() starts a fresh one."""
        self.proc.kill()
        self.proc.wait()
        self.sock.close()

    def start(self, argv: list[str], env: dict[str, str], log_fd: int, grace: float) -> ForkedProcess:
        """Fork a supervised engine running the simulator with `argv` (its flags)."""
        status_mine, status_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self.lock:
                socket.send_fds(self.sock, [json.dumps({"argv": argv, "env": env, "grace": grace}).encode()],
                                [log_fd, status_theirs.fileno()])
                ready, _, _ = select.select([self.sock], [], [], 60)
                if not ready:
                    raise OSError("no answer in 60 s")
                answer = json.loads(self.sock.recv(MAX_MESSAGE) or b"{}")
        except (OSError, ValueError) as exc:
            status_mine.close()
            self._abandon()
            raise ForkServerError(f"the simulated engines' fork server failed: {exc}") from exc
        finally:
            status_theirs.close()
        if "pid" not in answer:
            status_mine.close()
            raise ForkServerError(answer.get("error") or "the simulated engines' fork server did not answer")
        return ForkedProcess(int(answer["pid"]), status_mine)


_client: ForkServerClient | None = None
_client_lock = threading.Lock()


def client(env: dict[str, str]) -> ForkServerClient:
    """This process's fork server (a new one after a fork or if it died), started with `env`."""
    global _client
    with _client_lock:
        if _client is None or not _client.alive():
            _client = ForkServerClient(env)
        return _client


# ---- the server ------------------------------------------------------------------------------
def _engine(argv: list[str]) -> int:
    """The second fork: the simulated engine itself."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        from app.tools.simengine.__main__ import main

        code = main(argv, started_at=time.time())
    except SystemExit as exc:  # argparse's exit codes (2: unknown flag), as the real launchers
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported in the engine's log, as an interpreter would
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _supervisor(request: dict[str, Any], log_fd: int, server: int) -> None:
    """The first fork: becomes the supervisor of one engine; never returns."""
    code = 70
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.environ.clear()
        os.environ.update(request["env"])
        code = supervise(lambda: _engine(list(request["argv"])), server, float(request["grace"]))
    finally:
        os._exit(code)


def _recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    fds = array.array("i")
    msg, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(2 * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return (json.loads(msg) if msg else None), list(fds)


def serve(owner: int, sock: socket.socket) -> None:
    """Fork engines on request until the owner goes away."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != owner:
        return
    from app.tools.simengine.flags import parse_args  # the imports every engine would pay for, paid once
    from app.tools.simengine import server as _server  # noqa: F401 - aiohttp and the HTTP layer

    for engine in ("sglang", "vllm"):  # builds and caches both flag vocabularies
        parse_args(["--engine", engine, "--model", "warm-up"])
    gc.freeze()  # what is imported stays shared with the engines: their collections do not copy it
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    status: dict[int, int] = {}  # supervisor pid -> status socket fd
    me = os.getpid()
    while True:
        ready, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            while True:
                try:
                    pid, code = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                fd = status.pop(pid, None)
                if fd is not None:
                    exit_code = os.waitstatus_to_exitcode(code)
                    try:
                        os.write(fd, str(exit_code if exit_code >= 0 else 128 - exit_code).encode())
                    except OSError:
                        pass
                    os.close(fd)
        if sock in ready:
            request, fds = _recv(sock)
            if request is None:
                return  # the owner closed its end: our supervisors follow us (parent-death signal)
            if len(fds) != 2 or request.get("argv") is None:
                for fd in fds:
                    os.close(fd)
                sock.send(json.dumps({"error": "malformed request"}).encode())
                continue
            log_fd, status_fd = fds
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _supervisor(request, log_fd, me)
            os.close(log_fd)
            status[pid] = status_fd
            sock.send(json.dumps({"pid": pid}).encode())


if __name__ == "__main__":
    serve(int(sys.argv[1]), socket.socket(fileno=int(sys.argv[2])))
