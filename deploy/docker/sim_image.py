"""Build the `autotuner-sim` container image locally, without pulling anything.

GPU clusters are often offline and this project's CI has no registry, so the image that runs
the simulated engine in a container (deployment_mode docker, base_runtime sim) is made from
this machine: the running Python interpreter with its standard library, the packages the
simulator imports (aiohttp and what it needs), the shared libraries all of those link
against, and the project's `app` and `workers` packages, imported with `docker import`.

    python deploy/docker/sim_image.py [--tag autotuner-sim:latest]

It prints the image id. Real engines (SGLang, vLLM) use their published images instead.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("aiohttp",)  # what the simulator imports beyond the standard library
CODE_DIR = "/opt/autotuner"
# Parts of the standard library the simulator never imports.
SKIP_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "site-packages",
               "config-3.11-x86_64-linux-gnu", "__pycache__", "unittest", "distutils"}


def _requirements(name: str, seen: set[str]) -> None:
    """`name` and every distribution it requires (extras left out), recursively."""
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return
    seen.add(key)
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        _requirements(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0], seen)


def _copy(src: Path, rootfs: Path) -> None:
    dest = rootfs / str(src).lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        target = src.resolve()
        _copy(target, rootfs)
        if not dest.exists():
            os.symlink(target, dest)
    elif src.is_file() and not dest.exists():
        shutil.copy2(src, dest)


def _shared_libraries(binaries: list[Path]) -> set[Path]:
    """The shared libraries (ldd's view) of every binary and extension module copied."""
    found: set[Path] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            match = re.search(r"(/\S+)", line.split("=>")[-1])
            if match:
                found.add(Path(match.group(1)))
    return found


def build_rootfs(rootfs: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    executable = Path(sys.executable).resolve()
    _copy(executable, rootfs)
    for entry in stdlib.iterdir():
        if entry.name in SKIP_STDLIB:
            continue
        if entry.is_dir():
            shutil.copytree(entry, rootfs / str(entry).lstrip("/"), symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "test", "tests"))
        else:
            _copy(entry, rootfs)
    wanted: set[str] = set()
    for name in PACKAGES:
        _requirements(name, wanted)
    for key in sorted(wanted):
        dist = metadata.distribution(key)
        for file in dist.files or []:
            path = Path(dist.locate_file(file))
            if path.is_file() and "__pycache__" not in path.parts:
                _copy(path, rootfs)
    binaries = [executable] + [p for p in rootfs.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    for lib in _shared_libraries(binaries):
        _copy(lib, rootfs)
    bin_dir = rootfs / "usr/local/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("python3", "python"):
        os.symlink(executable, bin_dir / name)
    for package in ("app", "workers"):
        shutil.copytree(ROOT / package, rootfs / CODE_DIR.lstrip("/") / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static", "templates"))
    (rootfs / "tmp").mkdir(mode=0o1777, exist_ok=True)
    os.chmod(rootfs / "tmp", 0o1777)


def build_image(tag: str = "autotuner-sim:latest") -> str:
    """Build and import the image; returns its id."""
    import docker

    with tempfile.TemporaryDirectory(prefix="autotuner-sim-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        build_rootfs(rootfs)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(rootfs, arcname=".")
        client = docker.from_env()
        repository, _, version = tag.partition(":")
        changes = [f"ENV PYTHONPATH={CODE_DIR}", "ENV PATH=/usr/local/bin:/usr/bin:/bin", f"WORKDIR {CODE_DIR}",
                   'LABEL autotuner.simulated="true"']
        client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=version or "latest",
                                          changes=changes)
        return client.images.get(tag).id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="autotuner-sim:latest")
    args = parser.parse_args(argv)
    try:
        print(build_image(args.tag))
    except Exception as exc:  # noqa: BLE001 - one readable line for the operator
        print(f"could not build {args.tag}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
