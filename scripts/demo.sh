#!/usr/bin/env bash
# Set everything up and run the default scenario (or the one given): a 3x3 grid of
# namespaces routed by babeld, UDP, ping and TCP flows across it, a partition that heals
# and a node that crashes and restarts; numbers and checks at the end, then teardown.
# Run as root: sudo scripts/demo.sh [SCENARIO] [meshstress run options]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh >/dev/null
exec .venv/bin/meshstress run "$@"
