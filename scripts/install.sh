#!/usr/bin/env bash
# The one install script: CI (through scripts/bootstrap.sh) and the container image
# (Dockerfile) both run it, so a green CI proves what the image installs works.
#
#   scripts/install.sh VENV [--dev]
#
# As root on Debian 12: the apt packages nftproxy needs at run time (nft and
# Debian's libnftables binding, iproute2, conntrack, iptables and ipset for
# `cleanup --kube-proxy`, procps for sysctl), then a venv at VENV with nftproxy
# in it and the binding linked in. --dev installs the package editable with its
# development tools (lint, types, tests).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:?usage: scripts/install.sh VENV [--dev]}
dev=${2:-}

need_apt=0
for bin in nft ip conntrack iptables ipset sysctl; do command -v "$bin" >/dev/null || need_apt=1; done
[ -d /usr/lib/python3/dist-packages/nftables ] || need_apt=1
command -v "${PYTHON:-python3}" >/dev/null || need_apt=1
if [ "$need_apt" = 1 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        nftables python3-nftables python3 python3-venv iproute2 conntrack iptables ipset \
        procps >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
if [ "$dev" = --dev ]; then
    "$venv/bin/python" -m pip install -q -e '.[dev]'
else
    "$venv/bin/python" -m pip install -q .
fi
"$venv/bin/python" scripts/link_nftables.py
"$venv/bin/python" -c 'import nftables, pyroute2, kubernetes, tenacity, structlog'
