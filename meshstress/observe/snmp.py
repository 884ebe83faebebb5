"""The kernel's SNMP counters of a node's namespace (/proc/net/snmp, /proc/net/netstat).

`parse` is pure: the text of those files -> {"Ip": {"InHdrErrors": 3, ...}, ...}.
`read(mesh, node)` reads both inside the node's namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshstress.build import Mesh

Counters = dict[str, dict[str, int]]


def parse(text: str) -> Counters:
    """Pairs of lines "Group: Name Name ..." / "Group: 1 2 ..." -> {group: {name: value}}."""
    out: Counters = {}
    lines = [line.split() for line in text.splitlines() if line.strip()]
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if not names or names[0] != values[0] or not names[0].endswith(":"):
            continue
        group = names[0][:-1]
        out.setdefault(group, {}).update(
            {
                n: int(v)
                for n, v in zip(names[1:], values[1:], strict=False)
                if v.lstrip("-").isdigit()
            }
        )
    return out


def read(mesh: Mesh, node: str) -> Counters:
    """/proc/net/snmp and /proc/net/netstat as seen inside node's namespace."""
    done = mesh.run(node, ["cat", "/proc/net/snmp", "/proc/net/netstat"], capture_output=True,
                    text=True, check=True)  # fmt: skip
    return parse(done.stdout)


def delta(before: Counters, after: Counters) -> Counters:
    """after - before, counters that moved only."""
    out: Counters = {}
    for group, values in after.items():
        for name, v in values.items():
            d = v - before.get(group, {}).get(name, 0)
            if d:
                out.setdefault(group, {})[name] = d
    return out
