"""Build llama.cpp's `llama-server` from a pinned source into the user's cache.

Why this way: the machines the tuner runs on (developers', CI's) reach the Python package
index and nothing else, and the `llama-cpp-python` source distribution vendors a complete
llama.cpp tree. Pinning that distribution pins the llama.cpp the flag vocabulary was read
from (app/domain/engines/vocab/llamacpp.json). Only the `llama-server` target is built,
statically linked, without libcurl (no hub downloads) and without -march=native (a cached
binary keeps working on another CPU of the same architecture).

The build is idempotent: a binary that is already cached and answers `--version` is used
as it is; concurrent callers (a test run and a CLI call) serialise on a file lock.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: The llama-cpp-python source distribution whose vendored llama.cpp is built.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

#: cmake options: static, CPU-only by default, no network code, portable instruction set.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
)


class BuildError(RuntimeError):
    """The build could not be completed; the message says which step failed and why."""


def cache_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Where this version's build lives: $AUTOTUNER_CACHE_DIR, else $XDG_CACHE_HOME/autotuner,
    else ~/.cache/autotuner; then llama.cpp/<version>/."""
    base = os.environ.get("AUTOTUNER_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "autotuner")
    return Path(base) / "llama.cpp" / version


def server_path(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """The cached binary's path (it may not exist yet)."""
    return cache_dir(version) / "bin" / "llama-server"


def server_executable() -> str:
    """What runs llama-server on this host: $AUTOTUNER_LLAMA_SERVER, else the cached build
    when there is one, else `llama-server` from PATH."""
    explicit = os.environ.get("AUTOTUNER_LLAMA_SERVER")
    if explicit:
        return explicit
    cached = server_path()
    return str(cached) if cached.is_file() else "llama-server"


def cached_server(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path | None:
    """The cached binary if it is there and runs, else None."""
    path = server_path(version)
    if not path.is_file():
        return None
    try:
        proc = subprocess.run([str(path), "--version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if proc.returncode == 0 else None


def _run(argv: list[str], log, what: str, cwd: Path | None = None) -> None:
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    proc = subprocess.run(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise BuildError(f"{what} failed with exit status {proc.returncode} (see {log.name})")


def _fetch_source(work: Path, version: str, log) -> Path:
    """Download the pinned source distribution with pip and extract its vendored llama.cpp."""
    dl = work / "sdist"
    dl.mkdir()
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
          "-d", str(dl), f"llama-cpp-python=={version}"], log,
         "downloading the llama-cpp-python source distribution")
    archives = sorted(dl.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        raise BuildError("pip downloaded no llama-cpp-python source archive")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    src = work / "src"
    with tarfile.open(archives[0]) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise BuildError(f"{archives[0].name} carries no vendor/llama.cpp tree")
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(src, members=[m for m in members if m.name], filter="data")
    return src


def build_server(version: str = LLAMA_CPP_PYTHON_VERSION, jobs: int | None = None) -> Path:
    """Return the cached `llama-server`, building it first if needed; ``jobs`` caps the
    parallel compile jobs (default: the CPU count)."""
    found = cached_server(version)
    if found:
        return found
    root = cache_dir(version)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = cached_server(version)  # built by whoever held the lock before us
        if found:
            return found
        log_path = root / "build.log"
        with open(log_path, "w") as log, tempfile.TemporaryDirectory(dir=root, prefix="work-") as tmp:
            work = Path(tmp)
            src = _fetch_source(work, version, log)
            build = work / "build"
            cmake = shutil.which("cmake")
            if not cmake:
                raise BuildError("cmake is not installed")
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            _run([cmake, "-S", str(src), "-B", str(build), *generator, *CMAKE_OPTIONS],
                 log, "configuring llama.cpp with cmake")
            _run([cmake, "--build", str(build), "--target", "llama-server",
                  "-j", str(jobs or os.cpu_count() or 1)], log, "compiling llama-server")
            built = build / "bin" / "llama-server"
            if not built.is_file():
                raise BuildError(f"the build produced no {built.name} (see {log_path})")
            dest = server_path(version)
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging = dest.with_name(dest.name + ".new")
            shutil.copy2(built, staging)
            os.replace(staging, dest)  # atomic: a reader sees no half-copied binary
    found = cached_server(version)
    if not found:
        raise BuildError(f"the built {dest} does not run (see {log_path})")
    return found
