#!/usr/bin/env bash
# Set everything up and run the default scenario (or the one given): the mission, a 3x3
# grid of namespaces routed by batman-adv, UDP, ping and TCP flows across it, loss, delay
# and bandwidth sweeps on every link, BCC probes per node; the degradation tables and
# the verdict at the end, then teardown. Where this kernel lacks batman-adv, netem or
# kernel headers it runs in the VM lab (and says so). Hosts that can run it neither way:
# sudo scripts/demo.sh scenarios/quick.toml (babeld, no netem or BCC).
# Run as root: sudo scripts/demo.sh [SCENARIO] [meshstress run options]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh >/dev/null
exec .venv/bin/meshstress run "$@"
