"""Make container images from this machine's files, without pulling anything.

Shared by `sim_image.py` (the simulated engine's image) and `base_image.py` (a stand-in for
the official Python base image, so deploy/Dockerfile builds offline): copy files into a root
filesystem with the shared libraries they link against, then `docker import` it.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path


def requirements(name: str, seen: set[str]) -> None:
    """Add `name` and every distribution it requires (extras left out) to `seen`, recursively."""
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
        requirements(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0], seen)


def copy(src: Path, rootfs: Path, dest: Path | None = None) -> None:
    """Copy `src` to the same path under `rootfs` (or to `dest`, an absolute path inside it).
    A symlink is followed: its target is copied too and the link recreated."""
    dest = rootfs / str(dest or src).lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        target = src.resolve()
        copy(target, rootfs)
        if not dest.exists() and not dest.is_symlink():
            os.symlink(target, dest)
    elif src.is_file() and not dest.exists():
        shutil.copy2(src, dest)


def copy_tree(src: Path, rootfs: Path, dest: Path | None = None, skip: Iterable[str] = ()) -> None:
    """Copy a directory, leaving out byte-code caches and the names in `skip`."""
    shutil.copytree(src, rootfs / str(dest or src).lstrip("/"), symlinks=True, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", *skip))


def copy_distributions(names: Iterable[str], rootfs: Path) -> None:
    """Copy the installed distributions `names` and everything they require, at their paths."""
    wanted: set[str] = set()
    for name in names:
        requirements(name, wanted)
    for key in sorted(wanted):
        dist = metadata.distribution(key)
        for file in dist.files or []:
            path = Path(dist.locate_file(file))
            if path.is_file() and "__pycache__" not in path.parts:
                copy(path, rootfs)


def shared_libraries(binaries: Iterable[Path]) -> set[Path]:
    """The shared libraries (ldd's view) of every binary and extension module given."""
    found: set[Path] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            match = re.search(r"(/\S+)", line.split("=>")[-1])
            if match:
                found.add(Path(match.group(1)))
    return found


def copy_shared_libraries(rootfs: Path, extra: Iterable[Path] = (), exclude: Path | None = None) -> None:
    """Copy what every ELF file already in `rootfs` links against (and `extra`) into it,
    except libraries under `exclude` (a folder already copied elsewhere in the image)."""
    binaries = [p for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink() and _is_elf(p)]
    for lib in shared_libraries(binaries) | set(extra):
        if exclude is None or not lib.is_relative_to(exclude):
            copy(lib, rootfs)


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


def make_tmp(rootfs: Path) -> None:
    (rootfs / "tmp").mkdir(mode=0o1777, exist_ok=True)
    os.chmod(rootfs / "tmp", 0o1777)


def import_image(fill: Callable[[Path], None], tag: str, changes: list[str], prefix: str) -> str:
    """Build a root filesystem with `fill(rootfs)`, `docker import` it as `tag` with the
    Dockerfile `changes` (ENV, WORKDIR, LABEL, CMD...), and return the image id."""
    import docker

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        fill(rootfs)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(rootfs, arcname=".")
    client = docker.from_env()
    try:
        previous = client.images.get(tag).id
    except docker.errors.ImageNotFound:
        previous = None
    repository, _, version = tag.partition(":")
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=version or "latest",
                                      changes=changes)
    image_id = client.images.get(tag).id
    if previous is not None and previous != image_id:
        # Rebuilding re-points the tag: drop the image it named, or every rebuild leaves one
        # untagged copy behind (kept while a container still uses it).
        try:
            client.images.remove(previous)
        except docker.errors.APIError:
            pass
    return image_id


def image_main(build: Callable[[str], str], default_tag: str, description: str, argv: list[str] | None = None) -> int:
    """The image builders' command line: `--tag`, print the image id, or one readable line
    and status 1 when the build fails."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tag", default=default_tag)
    args = parser.parse_args(argv)
    try:
        print(build(args.tag))
    except Exception as exc:  # noqa: BLE001 - one readable line for the operator
        print(f"could not build {args.tag}: {exc}", file=sys.stderr)
        return 1
    return 0
