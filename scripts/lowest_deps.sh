#!/usr/bin/env bash
# Proves the lower bounds pyproject.toml declares: a throwaway venv with the lowest
# versions of the direct run-time dependencies it allows (uv's lowest-direct
# resolution), the test tools at their current versions, then the tests that need
# no kernel on the tree's code. Run by .ci/run after the main tests.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/python -m pip install -q uv
.venv/bin/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))
    ["project"]["dependencies"], sep="\n")' >"$tmp/runtime.txt"
.venv/bin/python -m venv "$tmp/venv"
.venv/bin/uv pip install -q --python "$tmp/venv/bin/python" --resolution lowest-direct \
    -r "$tmp/runtime.txt"
.venv/bin/uv pip install -q --python "$tmp/venv/bin/python" pytest hypothesis grimp \
    kubernetes-validate -c <(.venv/bin/uv pip freeze --python "$tmp/venv/bin/python")
"$tmp/venv/bin/python" scripts/link_nftables.py
"$tmp/venv/bin/python" -m pip list 2>/dev/null | grep -iE '^(kubernetes|tenacity|structlog|prometheus.client|pyyaml|orjson|pyroute2) '
PYTHONPATH=src "$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider -m "not kernel" \
    --ignore=tests/deploy
