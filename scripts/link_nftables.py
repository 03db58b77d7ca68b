"""Make Debian's libnftables binding importable from the running interpreter.

The binding ships as python3-nftables in /usr/lib/python3/dist-packages, which a
venv (or a pyenv Python) does not see. This writes a .pth file into the current
interpreter's site-packages pointing at a folder that holds only a link to the
binding, so nothing else from the system site-packages leaks in.
"""

from __future__ import annotations

import site
import sys
from pathlib import Path

SYSTEM_BINDING = Path("/usr/lib/python3/dist-packages/nftables")


def main() -> int:
    if not SYSTEM_BINDING.is_dir():
        print(f"missing {SYSTEM_BINDING}: apt-get install python3-nftables", file=sys.stderr)
        return 1
    site_dir = Path(site.getsitepackages()[0])
    link_dir = site_dir / "_nftables_link"
    link_dir.mkdir(exist_ok=True)
    link = link_dir / "nftables"
    if not link.exists():
        link.symlink_to(SYSTEM_BINDING)
    (site_dir / "nftables_binding.pth").write_text(f"{link_dir}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
