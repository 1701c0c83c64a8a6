"""Import a local stand-in for the official `python:3.11-slim` base image, without pulling.

deploy/Dockerfile builds FROM `python:3.11-slim` (pinned) by default. Where no registry can be
reached (offline clusters, this project's CI) this script makes an image with the same layout
from this machine's Python 3.11: the interpreter relocated to /usr/local (bin/python3.11,
lib/python3.11, lib/libpython3.11.so.1.0), the whole standard library (venv and ensurepip
included, which the Dockerfile's build stage uses), the shared libraries it links against,
and the system libraries that manylinux wheels may assume (libpthread, libstdc++, ...). No shell, no
compiler. Then:

    python deploy/docker/base_image.py            # prints the image id of autotuner-python-base:3.11
    python deploy/docker/build_image.py --base autotuner-python-base:3.11
"""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rootfs as fs  # noqa: E402 - the shared image helpers next to this script

DEFAULT_TAG = "autotuner-python-base:3.11"
PREFIX = Path("/usr/local")
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
# Never imported by a server: leave them out to keep the base small.
SKIP_STDLIB = ("test", "idlelib", "tkinter", "turtledemo", "site-packages", "*.a")
# The system libraries the manylinux policy lets wheels link against without bundling them
# (SQLAlchemy's and greenlet's extensions need libpthread and libstdc++, ...); Debian's slim
# image has them all. The graphics ones (libX11, libGL, ...) are left out: no server uses them.
MANYLINUX_LIBS = ("libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1",
                  "libnsl.so.1", "libresolv.so.2", "libcrypt.so.1", "libgcc_s.so.1", "libstdc++.so.6",
                  "libz.so.1", "libexpat.so.1")
PASSWD = "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _system_library(name: str) -> Path | None:
    for folder in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"):
        if (Path(folder) / name).exists():
            return Path(folder) / name
    return None


def build_rootfs(rootfs: Path) -> None:
    if sys.version_info[:2] != (3, 11):
        raise RuntimeError(f"the Dockerfile's base is Python 3.11; this is Python {VERSION}")
    executable = Path(sys.executable).resolve()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    fs.copy(executable, rootfs, PREFIX / "bin" / f"python{VERSION}")
    fs.copy_tree(stdlib, rootfs, PREFIX / "lib" / f"python{VERSION}", skip=SKIP_STDLIB)
    (rootfs / str(PREFIX / "lib" / f"python{VERSION}" / "site-packages").lstrip("/")).mkdir()
    libpython = sysconfig.get_config_var("INSTSONAME")  # libpython3.11.so.1.0 on a shared build
    libdir = Path(sysconfig.get_config_var("LIBDIR"))
    if libpython and (libdir / libpython).exists():
        fs.copy(libdir / libpython, rootfs, PREFIX / "lib" / libpython)
        # The interpreter's RUNPATH names this machine's prefix, absent in the image; the
        # loader's default path (/usr/lib) finds this link instead.
        (rootfs / "usr/lib").mkdir(parents=True, exist_ok=True)
        os.symlink(PREFIX / "lib" / libpython, rootfs / "usr/lib" / libpython)
    extra = [lib for lib in map(_system_library, MANYLINUX_LIBS) if lib]
    fs.copy_shared_libraries(rootfs, extra, exclude=libdir)
    bin_dir = rootfs / str(PREFIX / "bin").lstrip("/")
    for name in ("python3", "python"):
        os.symlink(f"python{VERSION}", bin_dir / name)
    etc = rootfs / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    (rootfs / "root").mkdir(mode=0o700, exist_ok=True)
    fs.make_tmp(rootfs)


def build_image(tag: str = DEFAULT_TAG) -> str:
    """Build and import the image; returns its id."""
    changes = ["ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
               f"ENV PYTHON_VERSION={sys.version.split()[0]}", 'CMD ["python3"]',
               'LABEL autotuner.local-base="true"']
    return fs.import_image(build_rootfs, tag, changes, prefix="autotuner-base-rootfs-")


def main(argv: list[str] | None = None) -> int:
    return fs.image_main(build_image, DEFAULT_TAG, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
