"""Regenerate the golden rulesets: ``python scripts/regen_rulesets.py``.

Every folder under rulesets/ holds ``manifests.yaml``; this writes beside it
``ruleset.nft``, what ``nftproxy render`` prints for it with the node flags in
rulesets/node-flags. tests/test_rulesets.py fails when the two drift apart.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

from nftproxy.cli.main import main as nftproxy

ROOT = Path(__file__).resolve().parent.parent / "rulesets"


def examples() -> list[Path]:
    """Every example folder."""
    return sorted(p.parent for p in ROOT.glob("*/manifests.yaml"))


def render_example(folder: Path) -> str:
    """What ``nftproxy render`` prints for one example."""
    flags = (ROOT / "node-flags").read_text().split()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = nftproxy(["render", "--strict", "-f", str(folder / "manifests.yaml"), *flags])
    if code != 0:
        raise RuntimeError(f"{folder}: nftproxy render exited {code}")
    return out.getvalue()


def main() -> int:
    for folder in examples():
        (folder / "ruleset.nft").write_text(render_example(folder))
        print(f"wrote {folder / 'ruleset.nft'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
