#!/usr/bin/env bash
# make run / make stop: start or stop the local stack (see stronghold/devstack.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/stronghold stack "$1"
