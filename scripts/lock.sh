#!/usr/bin/env bash
# Regenerates requirements.lock: the run-time dependencies of pyproject.toml, pinned
# with their hashes, which the image installs with --require-hashes
# (tests/deploy/test_lock.py fails when the two disagree). aiohttp and what it pulls
# in are left out: only kubernetes.aio imports them, and the image drops it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q uv
skip=(aiohttp aiohttp-retry aiosignal aiohappyeyeballs frozenlist multidict yarl propcache attrs)
.venv/bin/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
    --custom-compile-command "bash scripts/lock.sh" \
    "${skip[@]/#/--no-emit-package=}" -o requirements.lock
