"""Scenario text for the sweep tests, on the host (tbf) and in the VM lab (netem): a static
line of 3 nodes, a UDP stream "cbr" from n0 to n2, one sweep stepping the link n1-n2, and
a verdict on the stream's delivery ratio (monotone, and the floor given); and the same
line and stream alone (`cbr_line`) for the crash tests. A helper, not tests."""

from __future__ import annotations

import json


def cbr_line(name: str, *, rate: str = "100pps", size: int | None = None, head: str = "") -> str:
    """[scenario] (`name`, then the lines in `head`), a static line of 3 and the UDP stream
    "cbr" from n0 to n2 at `rate` (datagrams of `size` bytes)."""
    size_line = "" if size is None else f"size = {size}\n"
    return f"""
[scenario]
name = "{name}"
{head}
[mesh]
generate = "line 3"
routing = "static"

[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n2"
rate = "{rate}"
{size_line}"""


def cbr_sweep(
    name: str,
    axis: str,
    values: list[str],
    *,
    step: str,
    floor: str,
    rate: str = "100pps",
    size: int | None = None,
) -> str:
    """The scenario text: `values` on `axis` ("rate", "loss", ...) for `step` each, the
    first second of each step not measured; `floor` completes the floor assertion
    ("99% up_to rate=20mbit")."""
    return (
        cbr_line(name, rate=rate, size=size)
        + f"""
[sweep]
{axis} = {json.dumps(values)}
links = [["n1", "n2"]]
step = "{step}"
settle = "1s"

[verdict]
assert = ["curve.flows.cbr.delivery_ratio monotone",
          "curve.flows.cbr.delivery_ratio floor {floor}"]
"""
    )
