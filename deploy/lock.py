"""Writes deploy/requirements.lock: the runtime dependencies of pyproject.toml, as installed in this
interpreter's environment, pinned with `==` and the sha256 of every wheel the image build may pick.

Run it with the project's virtualenv after changing or upgrading a dependency, then rebuild the image:

    .venv/bin/python deploy/lock.py

Only the closure of `[project] dependencies` is locked (extras such as `dev` never reach the image). The
wheels are fetched with `pip download --isolated` (PyPI only: the hashes must be those the image build sees)
for CPython 3.11 on linux x86_64 and aarch64 at several glibc levels, because pip picks the newest
manylinux wheel a platform allows and the base image's glibc moves with its Debian release.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import tomllib
from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "deploy" / "requirements.lock"
PYTHON_VERSION = "3.11"  # the Dockerfile's base image (python:3.11-slim)
ARCHES = ("x86_64", "aarch64")  # linux/amd64 and linux/arm64
# glibc of the base images a build may run on: Debian 12 has 2.36, Debian 13 2.41; 2.17 and 2.28 are the levels
# most wheels are built for, and a system below them would pick an older file
GLIBC_MINORS = (17, 28, 36, 41)


def platform_tags(arch: str, glibc_minor: int) -> list[str]:
    """The manylinux tags a system with this glibc accepts, best first (as pip ranks them).

    pip's --platform does not expand `manylinux_2_41` to the older levels it implies: it takes them listed.
    """
    return [f"manylinux_2_{minor}_{arch}" for minor in range(glibc_minor, 4, -1)] + [
        f"manylinux2014_{arch}",
        f"manylinux2010_{arch}",
        f"manylinux1_{arch}",
    ]


def runtime_closure() -> dict[str, str]:
    """name -> installed version for the project's runtime dependencies and everything they pull in."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pending = [Requirement(line) for line in pyproject["project"]["dependencies"]]
    found: dict[str, str] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in visited:
            continue
        visited.add(key)
        dist = distribution(requirement.name)
        found[key[0]] = dist.version
        for line in dist.requires or []:
            child = Requirement(line)
            # a marker may name an extra ("extra == 'binary'"): it applies when the parent asked for it
            extras = requirement.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                pending.append(child)
    return dict(sorted(found.items()))


def wheel_hashes(pins: dict[str, str]) -> dict[str, list[str]]:
    """name -> sorted sha256 digests of the wheels `pip download` picks for each target platform.

    In hash-checking mode pip only considers the files whose hash is listed, so a platform needs one of
    them to be compatible; every package must have one for each architecture.
    """
    digests: dict[str, set[str]] = {name: set() for name in pins}
    missing: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHES:
            found: set[str] = set()
            for glibc_minor in GLIBC_MINORS:
                folder = Path(tmp) / f"{arch}-{glibc_minor}"
                requirements = [f"{name}=={version}" for name, version in pins.items()]
                if not download(requirements, platform_tags(arch, glibc_minor), folder):
                    # some package has no wheel this old (psycopg-binary on aarch64 needs glibc 2.28): one by one
                    for requirement in requirements:
                        download([requirement], platform_tags(arch, glibc_minor), folder)
                for wheel in folder.glob("*.whl"):
                    name = canonicalize_name(wheel.name.split("-")[0])
                    digests[name].add(hashlib.sha256(wheel.read_bytes()).hexdigest())
                    found.add(name)
            missing += [f"{name} ({arch})" for name in pins if name not in found]
    if missing:
        raise SystemExit(f"no wheel found for {', '.join(missing)}")
    return {name: sorted(found) for name, found in digests.items()}


def download(requirements: list[str], platforms: list[str], folder: Path) -> bool:
    """`pip download` of these exact wheels for CPython 3.11 on these platforms; False if one has none."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--isolated",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
    ]
    command += ["--implementation", "cp", "--python-version", PYTHON_VERSION, "--dest", str(folder)]
    command += [f"--platform={tag}" for tag in platforms]
    return subprocess.run([*command, *requirements], stderr=subprocess.DEVNULL).returncode == 0


def main() -> None:
    pins = runtime_closure()
    hashes = wheel_hashes(pins)
    lines = [
        "# Exact runtime dependencies of the container image (deploy/Dockerfile installs them with --no-deps;",
        "# the hashes put pip in hash-checking mode). Generated by `.venv/bin/python deploy/lock.py`: do not edit.",
    ]
    for name, version in pins.items():
        lines.append(f"{name}=={version} \\")
        lines += [f"    --hash=sha256:{digest} \\" for digest in hashes[name][:-1]]
        lines.append(f"    --hash=sha256:{hashes[name][-1]}")
    LOCK.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{LOCK.relative_to(ROOT)}: {len(pins)} packages")


if __name__ == "__main__":
    main()
