#!/usr/bin/env bash
# The one install script: CI (through scripts/bootstrap.sh) and the container image
# (Dockerfile) both run it, so a green CI proves what the image installs works.
#
#   scripts/install.sh VENV [--dev | --image]
#   scripts/install.sh --image-runtime
#
# As root on Debian 12: the apt packages nftproxy needs at run time (nft and
# Debian's libnftables binding, iproute2, conntrack, iptables and ipset for
# `cleanup --kube-proxy`, procps for sysctl), then a venv at VENV with nftproxy
# in it and the binding linked in. The package's hot modules are compiled with
# mypyc (setup.py), so a C compiler and Python's headers are installed too when
# missing; NFTPROXY_COMPILE=0 skips that. --dev adds the development tools (lint,
# types, tests) and builds against them; the package is installed, not linked to
# the tree, so run this again after a change (scripts/test.sh does), or run the
# tree's code uncompiled with PYTHONPATH=src.
#
# The image's two stages (Dockerfile): --image (the builder) takes the run-time
# dependencies from requirements.lock, by hash, and leaves the venv without pip,
# setuptools, kubernetes.aio (nothing here uses it; the lock leaves out aiohttp,
# which only it needs) or tests, byte-compiled for a read-only root.
# --image-runtime (the final stage) installs only the apt packages, with no
# documentation, and leaves no apt lists or caches.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME_APT=(nftables python3-nftables python3 iproute2 conntrack iptables ipset procps)

if [ "${1:-}" = --image-runtime ]; then
    # No documentation, manuals or translations, for these packages or the base's.
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
        'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/lintian/*' \
        >/etc/dpkg/dpkg.cfg.d/nftproxy-nodoc
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${RUNTIME_APT[@]}" >/dev/null
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/*.log \
        /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian/*
    find /usr/share/doc -type f ! -name copyright -delete
    exit 0
fi

venv=${1:?usage: scripts/install.sh VENV [--dev | --image] | --image-runtime}
dev=${2:-}

need_apt=0
for bin in nft ip conntrack iptables ipset sysctl; do command -v "$bin" >/dev/null || need_apt=1; done
[ -d /usr/lib/python3/dist-packages/nftables ] || need_apt=1
command -v "${PYTHON:-python3}" >/dev/null || need_apt=1
build_pkgs=()
if [ "${NFTPROXY_COMPILE:-1}" != 0 ]; then
    command -v gcc >/dev/null || build_pkgs+=(gcc libc6-dev)
    # Python.h for the interpreter the venv is made from (Debian's: python3-dev).
    headers=$("${PYTHON:-python3}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' \
        2>/dev/null || true)
    [ -n "$headers" ] && [ -f "$headers/Python.h" ] || build_pkgs+=(python3-dev)
fi
if [ "$need_apt" = 1 ] || [ ${#build_pkgs[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${RUNTIME_APT[@]}" python3-venv "${build_pkgs[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
rm -rf build  # setuptools copies whatever an earlier build left here into the package
if [ "$dev" = --dev ]; then
    # The dev tools include mypy, which compiles: build in the venv, not in a
    # throwaway one (about 30 s rather than 60 s on 2 cores).
    "$venv/bin/python" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))
        ["build-system"]["requires"], sep="\n")' >"$venv/build-requires.txt"
    "$venv/bin/python" -m pip install -q -r "$venv/build-requires.txt"
    "$venv/bin/python" -m pip install -q --no-build-isolation '.[dev]'
elif [ "$dev" = --image ]; then
    "$venv/bin/python" -m pip install -q --require-hashes --no-deps -r requirements.lock
    "$venv/bin/python" -m pip install -q --no-deps .
else
    "$venv/bin/python" -m pip install -q .
fi
rm -rf build
"$venv/bin/python" scripts/link_nftables.py
if [ "$dev" = --image ]; then
    site=$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
    "$venv/bin/python" -m pip uninstall -q -y pip setuptools
    rm -rf "$site/kubernetes/aio" "$venv/bin/pip"* "$venv/bin/activate"* "$venv/bin/Activate.ps1"
    find "$site" \( -name '*_test.py' -o -name 'test_*.py' \) -path '*/kubernetes/*' -delete
    find "$site" -name __pycache__ -prune -exec rm -rf {} +
    "$venv/bin/python" -m compileall -q -j 0 "$site" >/dev/null
fi
"$venv/bin/python" -c 'import nftables, pyroute2, kubernetes, tenacity, structlog'
if [ "${NFTPROXY_COMPILE:-1}" != 0 ]; then
    "$venv/bin/python" -c 'import nftproxy.k8s.objects as m; assert m.__file__.endswith(".so"), m.__file__'
fi
