#!/usr/bin/env bash
# Set everything up and run the default scenario: a 3x3 grid of namespaces routed by
# babeld, a ping from corner to corner (4 hops), then teardown.
# Run as root: sudo scripts/demo.sh [TOPOLOGY] [ROUTING]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh >/dev/null
ms=.venv/bin/meshstress
topo=${1:-}
routing=${2:-babeld}
if [ -z "$topo" ]; then
  topo=$(mktemp --suffix=.toml)
  trap 'rm -f "$topo"' EXIT
  $ms topo gen grid4 3 3 > "$topo"
fi
$ms topo show "$topo"
run=demo$((RANDOM % 100))
$ms up "$topo" --routing "$routing" --run "$run"
# Whatever happens next, the mesh goes away.
trap '$ms down --run "$run"; rm -f "${topo:-}"' EXIT
nodes=$(.venv/bin/python - "$run" <<'PY'
import sys
from meshstress import state
st = state.load(sys.argv[1])
names = list(st.node_ns)
print(names[0], names[-1])
PY
)
set -- $nodes
echo "ping $1 -> $2 across the mesh (run $run):"
$ms exec --run "$run" "$1" -- ping -c 5 -i 0.2 "@$2"
