#!/usr/bin/env bash
# Set up meshstress on a fresh Debian or Ubuntu host: system packages, a virtualenv made
# from the distribution's python3 (BCC only imports there), and the package itself.
# Idempotent; run as root. Usage: scripts/setup.sh [--quiet]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

# Debian packages, by purpose. --no-install-recommends keeps kernels and firmware off the host.
PKGS_CORE="python3 python3-venv python3-pip iproute2 iputils-ping procps ethtool iperf3 kmod util-linux"
PKGS_ROUTING="batctl babeld batmand"
PKGS_PROBES="python3-bpfcc"
PKGS_LAB="qemu-system-x86 busybox-static cpio zstd xz-utils"
PKGS_REPORT="python3-matplotlib"

missing=()
for p in $PKGS_CORE $PKGS_ROUTING $PKGS_PROBES $PKGS_LAB $PKGS_REPORT; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# The venv must come from the distribution's interpreter: python3-bpfcc lives there.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.base_prefix != "/usr")'; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
# From the package index; where it cannot be reached (a CI runner without network), from
# a local wheelhouse of the same packages if there is one (MESHSTRESS_WHEELHOUSE).
wheelhouse=${MESHSTRESS_WHEELHOUSE:-/var/lib/meshstress/wheels}
if ! .venv/bin/pip install -q --disable-pip-version-check --retries 1 --timeout 20 -e ".[test]" \
     >.venv/pip-install.log 2>&1; then
  if [ -d "$wheelhouse" ]; then
    echo "setup: the package index is out of reach; installing from $wheelhouse"
    .venv/bin/pip install -q --disable-pip-version-check --no-index --find-links "$wheelhouse" \
      -e ".[test]" || { tail -n 5 .venv/pip-install.log; exit 1; }
  else
    tail -n 5 .venv/pip-install.log; exit 1
  fi
fi
.venv/bin/meshstress --version
