"""requirements.lock (scripts/lock.sh) against pyproject.toml: the image installs the
lock with --require-hashes, so the two must agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LEFT_OUT = {"aiohttp", "aiohttp-retry", "aiosignal", "aiohappyeyeballs", "frozenlist"}
LEFT_OUT |= {"multidict", "yarl", "propcache", "attrs"}
"""Only kubernetes.aio imports these, and the image drops it (scripts/install.sh)."""


def locked() -> dict[str, tuple[str, int, set[str]]]:
    """name -> (version, hashes, what it is there for), as the lock says."""
    out: dict[str, tuple[str, int, set[str]]] = {}
    text = (ROOT / "requirements.lock").read_text()
    for block in re.split(r"\n(?=\S)", text):
        first = block.split()[0]
        if first.startswith("#"):
            continue
        name, _, version = first.partition("==")
        vias = re.findall(r"#\s+(?:via\s+)?([\w.-]+(?: \(pyproject\.toml\))?)\s*$", block, re.M)
        out[canonicalize_name(name)] = (version, block.count("--hash=sha256:"), set(vias) - {"via"})
    return out


def direct() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_every_dependency_is_locked_in_its_range() -> None:
    lock = locked()
    for req in direct():
        name = canonicalize_name(req.name)
        assert name in lock, f"{name} is not in requirements.lock: run scripts/lock.sh"
        version = lock[name][0]
        assert req.specifier.contains(version), f"{name}=={version} is outside {req.specifier}"


def test_every_locked_package_is_needed_and_hashed() -> None:
    lock = locked()
    wanted = {canonicalize_name(r.name) for r in direct()}
    for name, (version, hashes, vias) in lock.items():
        assert hashes, f"{name}=={version} has no hash"
        assert name not in LEFT_OUT, f"{name}: left out on purpose (scripts/lock.sh)"
        assert vias, f"{name}: the lock does not say what needs it"
        parents = {canonicalize_name(v) for v in vias if "pyproject" not in v}
        assert name in wanted or parents & set(lock), f"{name} is needed by nothing locked"
    assert wanted <= set(lock)
