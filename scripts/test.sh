#!/usr/bin/env bash
# Sets everything up (scripts/bootstrap.sh), then runs lint, type checks and every
# test, the kernel ones included (needs root: they build network namespaces),
# against the installed package with its compiled modules; without arguments, the
# tests that need no kernel run again on the tree's uncompiled code, and once more
# with the lowest versions of the dependencies pyproject.toml allows; then the
# container image is built from the Dockerfile and tested (scripts/image.sh; about
# 4 minutes the first time, NFTPROXY_IMAGE_TESTS=0 leaves it out).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
PYTHONPATH=src .venv/bin/lint-imports  # the tree, as ruff and mypy see it
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
if [ $# -eq 0 ]; then
    PYTHONPATH=src .venv/bin/python -m pytest -q -p no:cacheprovider -m "not kernel"
    bash scripts/lowest_deps.sh  # the declared lower bounds, proven (about a minute)
    if [ "${NFTPROXY_IMAGE_TESTS:-1}" != 0 ]; then
        bash scripts/image.sh build
        bash scripts/image.sh test
    fi
fi
