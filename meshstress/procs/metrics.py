"""Numbers a process reports, and what they add up to. Pure.

A process reports a metric in two ways (docs/scenario.md):
- a JSON line in the file named by $MESHSTRESS_METRICS: `{"ok": 1, "latency_ms": 12.5}`,
  an optional `"t"` (unix time) stamping the line, else the time meshstress read it;
- a line of its output matching one of its `metrics` regexes (stamped when read).

Either way a sample is `(t, name, value)`: t in unix seconds (time.time()), value a
finite float (true/false count as 1/0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from meshstress.judge import stats

Sample = tuple[float, str, float]


def parse_line(line: str, now: float) -> tuple[list[Sample], str | None]:
    """One JSON line of a metrics file -> (samples, problem). A line that is not a JSON
    object is a problem; keys whose values are not numbers (or true/false) are skipped,
    and so are names that could not be asserted on (meshstress.procs.spec.metric_problem)."""
    from meshstress.procs.spec import metric_problem

    text = line.strip()
    if not text:
        return [], None
    try:
        data = json.loads(text)
    except ValueError:
        return [], f"not JSON: {text[:80]!r}"
    if not isinstance(data, dict):
        return [], f"not a JSON object: {text[:80]!r}"
    t = now
    if "t" in data:
        stamp = data["t"]
        if isinstance(stamp, int | float) and not isinstance(stamp, bool) and math.isfinite(stamp):
            t = float(stamp)
        else:
            return [], f'"t" is not a unix time: {stamp!r}'
    out: list[Sample] = []
    skipped = []
    for key, value in data.items():
        if key == "t":
            continue
        if isinstance(value, bool):
            value = 1.0 if value else 0.0
        if not isinstance(value, int | float) or not math.isfinite(value):
            skipped.append(key)
            continue
        if metric_problem(key) is not None:
            skipped.append(key)
            continue
        out.append((t, key, float(value)))
    problem = (
        f"skipped {', '.join(map(repr, skipped))}: not a number or a usable name"
        if skipped
        else None
    )
    return out, problem


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else round(x, 6)


def process_metrics(
    samples: Iterable[Sample], window: tuple[float, float] | None = None
) -> dict[str, dict[str, Any]]:
    """Per metric name, over the samples whose time t lies in `window` (start <= t <= end,
    both in the samples' clock: unix seconds, time.time(); None: all of them):

        {"count": n, "mean": ..., "min": ..., "max": ..., "last": the value of the latest
         sample (by t; the later one read on a tie),
         and when every value is 0 or 1 (a success flag):
         "k": how many were 1, "n": how many in all, "ci95": [lo, hi] (Clopper-Pearson)}

    A metric without samples in the window is left out. A sweep computes its per-step
    numbers by calling this once per step with that step's (start, end); a monotonic
    window converts with `time.time() - time.monotonic()` taken once."""
    groups: dict[str, list[tuple[float, int, float]]] = {}
    for i, (t, name, value) in enumerate(samples):
        if window is not None and not window[0] <= t <= window[1]:
            continue
        groups.setdefault(name, []).append((t, i, value))
    out: dict[str, dict[str, Any]] = {}
    for name, rows in groups.items():
        values = [v for _, _, v in rows]
        m: dict[str, Any] = {
            "count": len(values),
            "mean": _num(sum(values) / len(values)),
            "min": _num(min(values)),
            "max": _num(max(values)),
            "last": _num(max(rows)[2]),
        }
        if all(v in (0.0, 1.0) for v in values):
            k = sum(1 for v in values if v == 1.0)
            lo, hi = stats.clopper_pearson(k, len(values), 0.95)
            m.update(k=k, n=len(values), ci95=[round(lo, 4), round(hi, 4)])
        out[name] = m
    return out


def exit_checks(processes: dict[str, Any]) -> list[dict[str, Any]]:
    """The implicit checks of results["process"]: a process whose on_exit is "fail" (or
    "restart", once its restarts are used up) must not end on its own before the run
    stops it. One JSON-ready check per such process, like meshstress.judge.verdict.check's."""
    out = []
    for name, p in processes.items():
        if p.get("on_exit") not in ("fail", "restart"):
            continue
        n = p.get("ended_early")
        out.append(
            {
                "assert": f"process {name} ran until the run stopped it (on_exit = {p['on_exit']})",
                "metric": f"process.{name}.ended_early",
                "actual": n,
                "passed": n == 0,
            }
        )
    return out


def alias(path: tuple[Any, ...], results: Mapping[str, Any]) -> tuple[Any, ...]:
    """An assertion path into results["process"] with the metrics' shorthand resolved:
    `process.NAME.METRIC` is `process.NAME.metrics.METRIC.mean` and
    `process.NAME.METRIC.STAT` is `process.NAME.metrics.METRIC.STAT`, where METRIC is not
    one of the keys meshstress fills (exit_code, restarts, ...). Other paths unchanged."""
    if len(path) < 3 or path[0] != "process" or not isinstance(path[2], str):
        return path
    procs = results.get("process")
    entry = procs.get(path[1]) if isinstance(procs, Mapping) else None
    if not isinstance(entry, Mapping) or path[2] in entry:
        return path
    return ("process", path[1], "metrics", path[2], *(path[3:] or ("mean",)))


def step_provider(samples: Iterable[Sample], offset: float) -> Any:
    """A sweep's per-window metric source for one process (meshstress.judge.degradation
    .StepProvider: (start, end) in monotonic seconds -> {metric: raw}), over its samples
    (unix time; `offset` = time.time() - time.monotonic(), taken once). A metric whose
    every sample in the run is 0 or 1 is a success flag: a Ratio(k, n) per window (pooled
    and given a Clopper-Pearson interval like a delivery ratio); any other a Mean of the
    window's values (a bootstrap interval of the mean). Windows without a sample of a
    metric leave it out (that step is `missing` on its curve)."""
    from meshstress.judge.degradation import Mean, Ratio

    rows = list(samples)
    flags = {name for _, name, _ in rows}
    flags -= {name for _, name, v in rows if v not in (0.0, 1.0)}

    def provide(start: float, end: float) -> dict[str, Any]:
        window = (start + offset, end + offset)
        out: dict[str, Any] = {}
        for name, m in process_metrics(rows, window).items():
            if name in flags:
                out[name] = Ratio(int(m["k"]), int(m["n"]))
            else:
                vals = tuple(v for t, n, v in rows if n == name and window[0] <= t <= window[1])
                out[name] = Mean(vals)
        return out

    return provide
