#!/usr/bin/env bash
# Install TraitorTrack into .venv and run it on the embedded default (no configuration needed).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/traitortrack serve "$@"
