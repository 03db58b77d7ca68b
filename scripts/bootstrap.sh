#!/usr/bin/env bash
# Installs everything nftproxy needs on a fresh Debian 12 machine (as root):
# apt packages, a venv in .venv, the package and its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=0
for bin in nft ip conntrack iptables ipset sysctl; do command -v "$bin" >/dev/null || need_apt=1; done
[ -d /usr/lib/python3/dist-packages/nftables ] || need_apt=1
if [ "$need_apt" = 1 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        nftables python3-nftables iproute2 conntrack iptables ipset procps >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python scripts/link_nftables.py
.venv/bin/python -c 'import nftables, pyroute2, kubernetes, tenacity, structlog'
