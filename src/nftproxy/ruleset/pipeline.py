"""The one pipeline every command shares: settings and objects in, desired ruleset out.

``render``, ``apply`` and ``diff`` feed it manifests; ``run`` feeds it what the
watches hold. Settings come resolved (:mod:`nftproxy.settings`); the node's
addresses and name, when the settings give none, from the host.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from nftproxy.k8s.manifests import Loaded, load_paths
from nftproxy.k8s.objects import Sourced
from nftproxy.k8s.problems import Problem, report
from nftproxy.nft.model import Ruleset
from nftproxy.proxy.state import ProxyState, compute_state
from nftproxy.ruleset.build import build
from nftproxy.settings import Settings
from nftproxy.settings.node import ConfigError, NodeConfig, node_config, with_node


class Wanted(NamedTuple):
    """What the objects ask for: the ruleset, what was skipped, and the state it
    was built from."""

    ruleset: Ruleset
    problems: list[Problem]
    state: ProxyState
    loaded: Loaded | None = None
    """The manifests it was built from (None: not from manifests)."""


def wanted(objects: Iterable[Sourced], node: NodeConfig) -> Wanted:
    """The desired ruleset for objects on this node."""
    state = compute_state(objects, node)
    return Wanted(build(state), list(state.problems), state)


class InputError(ConfigError):
    """Input that is not Kubernetes objects: nothing is applied (exit 2)."""


def desired(settings: Settings, paths: list[Path], netns: str | None = None) -> Wanted:
    """The desired ruleset from manifests. Input that is not Kubernetes objects
    raises :class:`InputError` after every such problem is printed.

    A Node named as this node among them, and ServiceCIDRs, count as in ``run``.
    """
    loaded = load_paths(paths)
    for error in loaded.errors:
        print(f"nftproxy: {error}", file=sys.stderr)
    if loaded.errors:
        raise InputError("nothing done: the input is not (only) Kubernetes objects")
    base = node_config(settings, netns)
    this = [n for _, n in loaded.nodes if n.name == base.name]
    loaded.problems += [
        Problem(
            src, f"Node {n.name}", "metadata.name", f"not this node ({base.name}); ignored", True
        )
        for src, n in loaded.nodes
        if n.name != base.name
    ]
    node = with_node(
        base, this[-1] if this else None, tuple(loaded.service_cidrs), settings.detect_local_mode
    )
    built = wanted(loaded.objects, node)
    problems = [*loaded.problems, *built.problems]
    report(problems)
    return built._replace(problems=problems, loaded=loaded)


def nothing_usable(wanted: Wanted) -> bool:
    """Whether every object read was invalid (said on stderr)."""
    if wanted.loaded is None or wanted.loaded.objects or not has_errors(wanted.problems):
        return False
    print("nftproxy: nothing usable could be read", file=sys.stderr)
    return True


def has_errors(problems: Iterable[Problem]) -> bool:
    """Whether any problem is an invalid object (not a deliberate skip)."""
    return any(not p.note for p in problems)


def status(strict: bool, problems: list[Problem]) -> int:
    """1 with --strict when an object was invalid, else 0."""
    return 1 if strict and has_errors(problems) else 0
