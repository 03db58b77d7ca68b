"""Kubernetes objects in: the API's objects parsed and checked (``objects``,
``problems``), manifests read from files (``manifests``), and the API client, its
reflectors and the cache they fill (``client``, ``reflector``, ``cache``, ``node``).
The bottom layer: it imports nothing of nftproxy but ``nft`` and ``log``.

Compiled with mypyc: ``objects`` and ``manifests`` (on a sync's path). Not the
client, reflector and cache: they raise and catch the client's exceptions and are
not hot."""

import importlib.util
import sys


def _without_init(package: str) -> None:
    """Let ``package``'s submodules be imported without running its ``__init__``.

    ``kubernetes/__init__`` imports every part of the client (dynamic, stream,
    leaderelection, informer, and ``config``, whose ``__init__`` loads the kubeconfig
    parser and its dependencies): 0.3 s of every start, while nftproxy uses four
    modules of it (``client``, ``client.exceptions``, ``watch.watch``, and one of
    ``config``'s loaders). A package already imported is left as it is."""
    if package in sys.modules:
        return
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations is not None:
        sys.modules[package] = importlib.util.module_from_spec(spec)


_without_init("kubernetes")
_without_init("kubernetes.config")
