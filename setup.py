"""nftproxy's build: the modules on the sync's hot path are compiled with mypyc.

Compiled, ``apply`` at 10,000 Services is about 20% faster end to end, and the
controller's syncs with it (figures in the README). The modules stay plain,
type-checked Python: ``PYTHONPATH=src`` runs them uncompiled from the tree, and
``NFTPROXY_COMPILE=0`` builds a package without the compiled copies.
"""

import os

from setuptools import setup

COMPILED = [
    "src/nftproxy/k8s/manifests.py",
    "src/nftproxy/k8s/objects.py",
    "src/nftproxy/proxy/state.py",
    "src/nftproxy/ruleset/build.py",
    "src/nftproxy/ruleset/names.py",
    "src/nftproxy/sync/checkpoint.py",
    "src/nftproxy/sync/plan.py",
    "src/nftproxy/nft/expressions.py",
    "src/nftproxy/nft/read.py",
    "src/nftproxy/nft/render.py",
    "src/nftproxy/nft/stages.py",
    "src/nftproxy/nft/transaction.py",
    "src/nftproxy/nft/values.py",
    "src/nftproxy/nft/wire.py",
    "src/nftproxy/nft/write.py",
]
"""Not nft/model.py: mypyc's frozen dataclasses cannot be unpickled, and the
kernel read that ``diff`` runs in a child process sends its tables back pickled."""


def _extensions() -> list[object]:
    if os.environ.get("NFTPROXY_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify  # noqa: PLC0415 (not needed to build uncompiled)

    return list(mypycify(COMPILED, opt_level="3"))


setup(ext_modules=_extensions())
