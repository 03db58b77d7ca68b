#!/usr/bin/env bash
# Installs everything nftproxy needs on a fresh Debian 12 machine (as root): the
# install script the image uses too (apt packages, a venv in .venv with the package
# and its dev tools), and helm for the chart's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh .venv --dev
.venv/bin/python scripts/get_helm.py
