"""constraints.txt: the exact versions every install of this repository uses (make lock)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line.strip())
        assert match, f"not an exact pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{name} pinned twice"
        pins[name] = match.group(2)
    return pins


def _direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for group in project["optional-dependencies"].values():
        found += [Requirement(r) for r in group if not r.startswith("keyservice")]
    return found


def test_every_dependency_is_pinned_within_its_declared_range() -> None:
    pins = _pins()
    for requirement in _direct_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's "
            f"{requirement.specifier}: run make lock"
        )


def test_this_environment_was_installed_from_the_pins() -> None:
    # make test installs with -c constraints.txt; a version that differs here means the
    # suite is running on something other than what the lock (and the image) ship.
    for name, version in _pins().items():
        installed = metadata.version(name)
        assert installed == version, (
            f"{name} {installed} is installed, constraints.txt pins {version}: "
            "reinstall with make test (or make lock to move the pins)"
        )


def test_the_image_builds_from_the_pins() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = re.search(r"^COPY (.*) \./$", dockerfile, re.MULTILINE)
    assert copied and "constraints.txt" in copied.group(1).split()
    wheel = re.search(r"pip wheel [^\n]*", dockerfile)
    assert wheel and "-c constraints.txt" in wheel.group(0)
