"""Assertions over a run's results: "flows.cbr.delivery_ratio >= 95%" -> pass or fail.

Pure. An assertion is `PATH OP VALUE`:
- PATH walks the results JSON: dotted keys, `[N]` for list items, e.g.
  `flows.cbr.latency_ms.p99`, `events[0].recovery_s.cbr`, `mesh.convergence_s`.
  Keys may contain '-' (flow names like `udp-n0-n8`).
- OP is one of >= <= > < == !=.
- VALUE is a number, true/false, or a unit string: "95%" (a fraction), "8s"/"20ms"
  (a duration: compared in the unit the path's names say, under a `_ms` name in
  milliseconds, otherwise in seconds), "2mbit" (bits per second), "64kb" (bytes).

`judge(assertions, results)` returns one JSON-ready check per assertion with the
measured value; a path the results do not have fails its check and says what exists.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshstress.model import units

OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_EXPR = re.compile(r"^\s*(?P<path>[^\s<>=!]+)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>\S.*?)\s*$")
_SEGMENT = re.compile(r"(?P<key>[^.\[\]]+)?(?P<idx>(?:\[\d+\])*)")

PathPart = str | int


@dataclass(frozen=True)
class Assertion:
    text: str
    path: tuple[PathPart, ...]
    op: str
    value: float | bool

    @property
    def metric(self) -> str:
        return format_path(self.path)


def parse_path(text: str) -> tuple[PathPart, ...]:
    """'events[0].recovery_s.cbr' -> ('events', 0, 'recovery_s', 'cbr')."""
    if not text or text.startswith(".") or text.endswith(".") or ".." in text:
        raise ValueError(f"bad metric path {text!r}")
    parts: list[PathPart] = []
    for segment in text.split("."):
        m = _SEGMENT.fullmatch(segment)
        if not m or (not m.group("key") and not m.group("idx")):
            raise ValueError(f"bad metric path {text!r} at {segment!r}")
        if m.group("key"):
            parts.append(m.group("key"))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group("idx")))
    return tuple(parts)


def format_path(path: Sequence[PathPart]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def parse_value(text: str, key: str) -> float | bool:
    """The right-hand side, in the unit `key` (the path's last name) is measured in."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        number = float(t)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"{t!r} is not a finite number")
        return number
    if t.endswith("%"):
        return units.parse_fraction(t)
    for parse, scale in (
        (units.parse_duration, 1000.0 if key.endswith("_ms") else 1.0),
        (units.parse_rate, 1.0),
        (units.parse_size, 1.0),
    ):
        try:
            return float(parse(t)) * scale
        except ValueError:
            continue
    raise ValueError(
        f"{t!r} is not a number, true/false, or a value with a unit (95%, 8s, 20ms, 2mbit, 64kb)"
    )


def parse_assertion(text: str) -> Assertion:
    """Raises ValueError with a short reason."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string like 'flows.cbr.delivery_ratio >= 95%', got {text!r}")
    m = _EXPR.match(text)
    if not m:
        raise ValueError(
            f"{text!r} is not 'METRIC OP VALUE' (e.g. 'flows.cbr.delivery_ratio >= 95%'; "
            "OP one of >= <= > < == !=)"
        )
    path = parse_path(m.group("path"))
    # the unit a value is measured in shows in the innermost name with a unit suffix:
    # latency_ms.p99 is in milliseconds, recovery_s.cbr in seconds
    unit_key = next((p for p in reversed(path) if isinstance(p, str) and "_" in p), "")
    value = parse_value(m.group("value"), unit_key)
    if isinstance(value, bool) and m.group("op") not in ("==", "!="):
        raise ValueError(f"{text!r}: true/false compares only with == or !=")
    return Assertion(text=text.strip(), path=path, op=m.group("op"), value=value)


class MissingMetric(LookupError):
    pass


def lookup(results: Mapping[str, Any], path: Sequence[PathPart]) -> Any:
    """The value at `path`; MissingMetric saying what exists where the walk stopped."""
    path = _process_alias(results, path)
    node: Any = results
    walked: list[PathPart] = []
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                size = len(node) if isinstance(node, list) else "no"
                raise MissingMetric(f"{format_path(walked) or 'results'} has {size} items")
            node = node[part]
        else:
            if not isinstance(node, Mapping) or part not in node:
                keys = ", ".join(sorted(node)) if isinstance(node, Mapping) else "nothing"
                where = format_path(walked) or "results"
                raise MissingMetric(f"no {part!r} in {where} (has: {keys})")
            node = node[part]
        walked.append(part)
    return node


def _process_alias(results: Mapping[str, Any], path: Sequence[PathPart]) -> Sequence[PathPart]:
    """process.NAME.METRIC -> process.NAME.metrics.METRIC.mean (meshstress.procs.metrics)."""
    if not path or path[0] != "process":
        return path
    from meshstress.procs.metrics import alias

    return alias(tuple(path), results)


def check(assertion: Assertion, results: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"assert": assertion.text, "metric": assertion.metric}
    try:
        actual = lookup(results, assertion.path)
    except MissingMetric as exc:
        out.update(actual=None, passed=False, error=str(exc))
        return out
    out["actual"] = actual
    if actual is None:
        out.update(passed=False, error="not measured (null)")
        return out
    if isinstance(assertion.value, bool) != isinstance(actual, bool) or not isinstance(
        actual, int | float
    ):
        out.update(passed=False, error=f"cannot compare {type(actual).__name__} with the value")
        return out
    out["passed"] = bool(OPS[assertion.op](actual, assertion.value))
    return out


def judge(assertions: Sequence[Assertion], results: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [check(a, results) for a in assertions]


# --- is the run valid at all: was the mesh measured, or the host? ----------------------


@dataclass(frozen=True)
class HostLimits:
    """`[verdict]` limits beyond which a run measured the host rather than the mesh
    (flows start late, daemons miss their timers, packets wait in backlogs): the run is
    INVALID (exit 4), whatever its checks say."""

    max_host_busy: float = 0.95  # a CPU sample (all cores) this busy or more is saturated
    max_saturated_share: float = 0.25  # invalid above this share of saturated samples
    max_softnet_drops: int = 0  # invalid when the host's softnet backlogs dropped more


def judge_host(
    cpu_busy: Sequence[float], softnet_dropped: int | None, limits: HostLimits
) -> tuple[bool, str]:
    """(valid, one line saying why) from the run's CPU samples (busy fraction of all
    cores between route snapshots, 0..1) and the packets the kernel dropped because a
    CPU's input backlog was full (/proc/net/softnet_stat, over the run; None: unread)."""
    problems = []
    facts = []
    if cpu_busy:
        saturated = sum(1 for c in cpu_busy if c >= limits.max_host_busy)
        share = saturated / len(cpu_busy)
        facts.append(
            f"CPUs {limits.max_host_busy:.0%}+ busy in {saturated} of {len(cpu_busy)} samples"
        )
        if share > limits.max_saturated_share:
            problems.append(
                f"the host's CPUs were {limits.max_host_busy:.0%}+ busy in {share:.0%} of "
                f"the run's samples (limit {limits.max_saturated_share:.0%})"
            )
    else:
        facts.append("host CPU not sampled")
    if softnet_dropped is not None:
        facts.append(f"{softnet_dropped} softnet backlog drops")
        if softnet_dropped > limits.max_softnet_drops:
            problems.append(
                f"the host dropped {softnet_dropped} packets from full softnet backlogs "
                f"(limit {limits.max_softnet_drops})"
            )
    if problems:
        return False, "; ".join(problems) + ": the numbers measure the host, not the mesh"
    return True, "host not saturated: " + ", ".join(facts)


def softnet_dropped(text: str) -> int:
    """Packets dropped from full input backlogs, summed over CPUs: the second column of
    /proc/net/softnet_stat (one line per CPU, hexadecimal)."""
    total = 0
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 2:
            total += int(cols[1], 16)
    return total
