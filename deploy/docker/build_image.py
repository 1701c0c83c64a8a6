"""Build deploy/Dockerfile offline: from a locally imported base and this machine's wheels.

    python deploy/docker/build_image.py [--tag autotuner:local] [--base IMAGE]

Without --base it imports `autotuner-python-base:3.11` first (base_image.py: this machine's
Python 3.11, nothing pulled). It collects `pip wheel -r requirements.txt` (plus setuptools and
wheel, which installing the project needs) from whatever index this machine's pip is
configured with into a cache (~/.cache/autotuner-wheelhouse; the working tree stays clean),
places them in the context as deploy/wheelhouse/, and builds with PIP_NO_INDEX=1 so the build
never reaches the network. The context holds only what deploy/Dockerfile.dockerignore lets
through. Prints the image id.
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import base_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = "deploy/Dockerfile"
WHEELHOUSE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autotuner-wheelhouse"
BUILD_REQUIREMENTS = ("setuptools>=64", "wheel")  # pyproject.toml's build-system


def fill_wheelhouse(wheelhouse: Path = WHEELHOUSE) -> None:
    """Wheels of the runtime set (cached: pip skips what is already there)."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--only-binary=:all:", "--wheel-dir",
                    str(wheelhouse), "-r", str(ROOT / "requirements.txt"), *BUILD_REQUIREMENTS], check=True)


def context(wheelhouse: Path = WHEELHOUSE) -> bytes:
    """The build context as a tar, filtered by deploy/Dockerfile.dockerignore (the legacy
    builder, which the Docker SDK talks to, only reads a .dockerignore at the context root),
    with the wheels of `wheelhouse` as deploy/wheelhouse/."""
    from docker.utils.build import exclude_paths

    patterns = [line.strip() for line in (ROOT / "deploy/Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(exclude_paths(str(ROOT), patterns, dockerfile=DOCKERFILE)):
            tar.add(ROOT / path, arcname=path, recursive=False)
        tar.add(ROOT / DOCKERFILE, arcname=DOCKERFILE)
        for wheel in sorted(wheelhouse.glob("*.whl")):
            tar.add(wheel, arcname=f"deploy/wheelhouse/{wheel.name}")
    return buffer.getvalue()


def build(tag: str = "autotuner:local", base: str | None = None) -> str:
    """Build the image; returns its id. Raises docker.errors.BuildError with the log on failure."""
    import docker

    base = base or (base_image.build_image() and base_image.DEFAULT_TAG)
    fill_wheelhouse()
    client = docker.from_env()
    image, _ = client.images.build(fileobj=io.BytesIO(context()), custom_context=True, dockerfile=DOCKERFILE,
                                   tag=tag, rm=True, forcerm=True, pull=False,
                                   buildargs={"PYTHON_BASE": base, "PIP_NO_INDEX": "1"})
    return image.id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="autotuner:local")
    parser.add_argument("--base", help="Base image already present (default: import autotuner-python-base:3.11)")
    args = parser.parse_args(argv)
    try:
        print(build(args.tag, args.base))
    except Exception as exc:  # noqa: BLE001 - one readable line, plus the build log when there is one
        for chunk in getattr(exc, "build_log", []) or []:
            print(chunk.get("stream", "") or chunk.get("error", ""), end="", file=sys.stderr)
        print(f"could not build {args.tag}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
