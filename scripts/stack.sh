#!/usr/bin/env bash
# make run / make stop: start or stop the local stack (see devtools/devstack.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m devtools.devstack "$1"
