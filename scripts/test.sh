#!/usr/bin/env bash
# Sets everything up (scripts/bootstrap.sh), then runs lint, type checks and every
# test, the kernel ones included (needs root: they build network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
