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

import os
import shutil
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rootfs as fs  # noqa: E402 - the shared image helpers next to this script

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("aiohttp",)  # what the simulator imports beyond the standard library
CODE_DIR = "/opt/autotuner"
# Parts of the standard library the simulator never imports.
SKIP_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "site-packages",
               "config-3.11-x86_64-linux-gnu", "__pycache__", "unittest", "distutils"}


def build_rootfs(rootfs: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    executable = Path(sys.executable).resolve()
    fs.copy(executable, rootfs)
    for entry in stdlib.iterdir():
        if entry.name in SKIP_STDLIB:
            continue
        if entry.is_dir():
            fs.copy_tree(entry, rootfs, skip=("test", "tests"))
        else:
            fs.copy(entry, rootfs)
    fs.copy_distributions(PACKAGES, rootfs)
    fs.copy_shared_libraries(rootfs)
    bin_dir = rootfs / "usr/local/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("python3", "python"):
        os.symlink(executable, bin_dir / name)
    for package in ("app", "workers"):
        shutil.copytree(ROOT / package, rootfs / CODE_DIR.lstrip("/") / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static", "templates"))
    fs.make_tmp(rootfs)


def build_image(tag: str = "autotuner-sim:latest") -> str:
    """Build and import the image; returns its id."""
    changes = [f"ENV PYTHONPATH={CODE_DIR}", "ENV PATH=/usr/local/bin:/usr/bin:/bin", f"WORKDIR {CODE_DIR}",
               'LABEL autotuner.simulated="true"']
    return fs.import_image(build_rootfs, tag, changes, prefix="autotuner-sim-rootfs-")


def main(argv: list[str] | None = None) -> int:
    return fs.image_main(build_image, "autotuner-sim:latest", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
