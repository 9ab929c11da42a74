#!/usr/bin/env bash
# make run / make stop: start or stop the local stack (see devtools/devstack.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
    if [[ "$1" == stop ]]; then
        # 'make stop' never builds anything: without the virtualenv no stack ran from this checkout
        echo "no stack runs from $(pwd): it has no .venv ('make run' creates it)"
        exit 0
    fi
    echo "no .venv in $(pwd): 'make run' creates it" >&2
    exit 2
fi
exec .venv/bin/python -m devtools.devstack "$1"
