"""A scenario's `[[process]]` entries: the user's own programs on the mesh. Pure.

    [[process]]
    name = "echo"                          # a label; no "." (it is part of assertion paths)
    nodes = ["n0"]                         # or one name; one process per node: echo@n0
    command = ["python3", "echo.py", "--peer", "@n2"]   # or a string, split with shlex
    ready = { line = "listening", timeout = "10s" }      # or { port = 7, proto = "udp" }
    env = { ECHO_MODE = "fast" }           # on top of a minimal environment
    on_exit = "fail"                       # fail (default) | ignore | restart
    max_restarts = 3                       # on_exit = "restart": how many times
    start = "0s"                           # after the mesh converged, before traffic
    cwd = "."                              # relative to the scenario file (the default)
    metrics = [{ name = "rtt_ms", regex = 'rtt=([0-9.]+)' }]   # numbers from its output

`parse_processes(raw, source, topo, base)` -> [ProcessSpec]; every error an InputError
naming the file and the field (`process[1].ready.port`). `base_env` and `node_refs` are
the pieces meshstress.procs.run uses to start them. docs/scenario.md has the format.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshstress.errors import InputError
from meshstress.model import names, units

if TYPE_CHECKING:
    from collections.abc import Mapping

    from meshstress.model.topology import Topology

KEYS = ("name", "nodes", "command", "ready", "env", "on_exit", "max_restarts", "start",
        "cwd", "metrics")  # fmt: skip
READY_KEYS = ("line", "port", "proto", "timeout")
METRIC_KEYS = ("name", "regex")
ON_EXIT = ("fail", "ignore", "restart")
PROTOS = ("tcp", "udp")
DEFAULT_READY_TIMEOUT = 30.0
DEFAULT_MAX_RESTARTS = 3
MAX_RESTARTS = 1000
# Keys of results["process"][NAME] that meshstress fills; a metric may not take these names
# (assertions `process.NAME.METRIC` look for the metric where no such key is).
RESERVED = ("nodes", "instances", "ready", "ready_s", "exit_code", "exit_codes", "restarts",
            "exited", "stopped", "metrics", "errors", "on_exit", "command")  # fmt: skip
METRIC_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# the variables meshstress sets itself (the user's env may not override them)
OWN_ENV = ("MESHSTRESS_METRICS", "MESHSTRESS_NODE", "MESHSTRESS_PROCESS", "MESHSTRESS_ADDRESS",
           "MESHSTRESS_RUN")  # fmt: skip
# What a process gets of meshstress's own environment: where programs are, locale, time
# zone, home; nothing else (no tokens, agent sockets, sudo or session variables).
ENV_NAMES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TERM")
ENV_PREFIXES = ("LC_",)
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# '@NODE' at the start of an argument or after '=', ':' or ',' (meshstress.cli.host's
# expand_node_refs, which the runtime applies; '@@' is a literal '@')
NODE_REF_RE = re.compile(r"(?:^|(?<=[=:,]))@(@|[A-Za-z0-9_][A-Za-z0-9_-]*)")


@dataclass(frozen=True)
class Ready:
    """When a process counts as ready: a line of its output matching `line` (a regex,
    searched), or a socket listening on `port` (tcp: LISTEN; udp: bound) inside its
    node's namespace; within `timeout` seconds of its start."""

    line: str | None = None
    port: int | None = None
    proto: str = "tcp"
    timeout: float = DEFAULT_READY_TIMEOUT


@dataclass(frozen=True)
class MetricRegex:
    """A number taken from each output line the regex matches: its first group (or the
    group named `value`), else the whole match."""

    name: str
    regex: str

    def value(self, line: str) -> float | None:
        m = re.search(self.regex, line)
        if m is None:
            return None
        if "value" in m.re.groupindex:
            text = m.group("value")
        elif m.re.groups:
            text = m.group(1)
        else:
            text = m.group(0)
        try:
            v = float(text)
        except (TypeError, ValueError):
            return None
        return v if math.isfinite(v) else None


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    nodes: tuple[str, ...]
    command: tuple[str, ...]
    ready: Ready | None = None
    env: tuple[tuple[str, str], ...] = ()
    on_exit: str = "fail"
    max_restarts: int = 0  # on_exit = "restart" only
    start: float = 0.0  # seconds after the mesh converged
    cwd: str = "."  # absolute once parsed
    metrics: tuple[MetricRegex, ...] = field(default_factory=tuple)

    def instance(self, node: str) -> str:
        """The name of its process on `node` in records and file names: NAME@NODE."""
        return f"{self.name}@{node}"


def node_refs(arg: str) -> list[str]:
    """The node names an argument refers to with '@NODE' ('@@' is a literal '@')."""
    return [m.group(1) for m in NODE_REF_RE.finditer(arg) if m.group(1) != "@"]


def base_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The minimal environment a process starts from: the allow-listed part of
    meshstress's own (ENV_NAMES, ENV_PREFIXES; never a name that looks like a secret),
    a PATH even when there was none, and PYTHONUNBUFFERED=1 (its output is a pipe that
    meshstress reads line by line: a Python program then prints each line at once)."""
    out = {
        k: v
        for k, v in environ.items()
        if (k in ENV_NAMES or k.startswith(ENV_PREFIXES))
        and not any(w in k.upper() for w in _SECRET_WORDS)
    }
    out.setdefault("PATH", DEFAULT_PATH)
    out["PYTHONUNBUFFERED"] = "1"
    return out


def _fail(source: str, fld: str, msg: str) -> InputError:
    return InputError(source, fld, msg)


def _duration(source: str, value: Any, fld: str, positive: bool = False) -> float:
    try:
        v = units.parse_duration(value)
    except (ValueError, OverflowError) as exc:
        raise _fail(source, fld, str(exc)) from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise _fail(source, fld, "must be more than 0s" if positive else "must be 0s or more")
    return v


def _regex(source: str, value: Any, fld: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(source, fld, "expected a regular expression (a non-empty string)")
    try:
        re.compile(value)
    except re.error as exc:
        raise _fail(source, fld, f"not a regular expression: {exc}") from None
    return value


def _command(source: str, value: Any, fld: str, nodes: set[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:  # an unclosed quote
            raise _fail(source, fld, f"{value!r}: {exc}") from None
    elif isinstance(value, list) and all(isinstance(a, str) for a in value):
        argv = list(value)
    else:
        raise _fail(source, fld, "expected a list of strings (argv) or a string")
    if not argv or not argv[0]:
        raise _fail(source, fld, "is empty: name the program to run")
    for j, arg in enumerate(argv):
        if "\0" in arg:
            raise _fail(source, f"{fld}[{j}]", "holds a NUL character")
        for ref in node_refs(arg):
            if ref not in nodes:
                raise _fail(source, f"{fld}[{j}]", f"@{ref}: no such node in the mesh")
    return tuple(argv)


def _nodes(source: str, value: Any, fld: str, nodes: set[str]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise _fail(source, fld, "expected a node name or a non-empty list of node names")
    for j, node in enumerate(items):
        if not isinstance(node, str) or node not in nodes:
            raise _fail(source, f"{fld}[{j}]", f"unknown node {node!r}")
    if len(set(items)) != len(items):
        raise _fail(source, fld, "names a node twice")
    return tuple(items)


def _ready(source: str, value: Any, fld: str) -> Ready:
    if not isinstance(value, dict):
        raise _fail(source, fld, '{ line = "REGEX" } or { port = N, proto = "tcp" | "udp" }')
    for key in value:
        if key not in READY_KEYS:
            raise _fail(source, f"{fld}.{key}", f"unknown key (allowed: {', '.join(READY_KEYS)})")
    if ("line" in value) == ("port" in value):
        raise _fail(source, fld, "give exactly one of line (a regex) or port")
    kw: dict[str, Any] = {}
    if "line" in value:
        kw["line"] = _regex(source, value["line"], f"{fld}.line")
        if "proto" in value:
            raise _fail(source, f"{fld}.proto", "goes with port, not line")
    else:
        port = value["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise _fail(source, f"{fld}.port", f"expected a port 1..65535, got {port!r}")
        kw["port"] = port
        if "proto" in value:
            if value["proto"] not in PROTOS:
                raise _fail(source, f"{fld}.proto", f"expected tcp or udp, got {value['proto']!r}")
            kw["proto"] = value["proto"]
    if "timeout" in value:
        kw["timeout"] = _duration(source, value["timeout"], f"{fld}.timeout", positive=True)
    return Ready(**kw)


def _env(source: str, value: Any, fld: str, nodes: set[str]) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _fail(source, fld, 'expected a table of NAME = "value"')
    out = []
    for key, v in value.items():
        if not ENV_NAME_RE.fullmatch(key):
            raise _fail(source, f"{fld}.{key}", "not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if key in OWN_ENV:
            raise _fail(source, f"{fld}.{key}", "set by meshstress; choose another name")
        if not isinstance(v, str):
            raise _fail(source, f"{fld}.{key}", f"expected a string, got {type(v).__name__}")
        if "\0" in v:
            raise _fail(source, f"{fld}.{key}", "holds a NUL character")
        for ref in node_refs(v):
            if ref not in nodes:
                raise _fail(source, f"{fld}.{key}", f"@{ref}: no such node in the mesh")
        out.append((key, v))
    return tuple(out)


def _metrics(source: str, value: Any, fld: str) -> tuple[MetricRegex, ...]:
    if not isinstance(value, list):
        raise _fail(source, fld, 'expected a list of { name = "...", regex = "..." }')
    out: list[MetricRegex] = []
    for j, item in enumerate(value):
        at = f"{fld}[{j}]"
        if not isinstance(item, dict):
            raise _fail(source, at, 'expected { name = "...", regex = "..." }')
        for key in item:
            if key not in METRIC_KEYS:
                raise _fail(source, f"{at}.{key}", "unknown key (allowed: name, regex)")
        for key in METRIC_KEYS:
            if key not in item:
                raise _fail(source, f"{at}.{key}", "missing")
        name = metric_name(source, item["name"], f"{at}.name")
        if any(m.name == name for m in out):
            raise _fail(source, f"{at}.name", f"duplicate metric name {name!r}")
        out.append(MetricRegex(name, _regex(source, item["regex"], f"{at}.regex")))
    return tuple(out)


def metric_problem(name: object) -> str | None:
    """Why `name` cannot name a process metric, or None."""
    if not isinstance(name, str) or not METRIC_NAME_RE.fullmatch(name):
        return "must be 1-64 letters, digits or '_', not starting with a digit"
    if name in RESERVED or name == "t":
        return f"is reserved (reserved: t, {', '.join(RESERVED)})"
    return None


def metric_name(source: str, value: Any, fld: str) -> str:
    why = metric_problem(value)
    if why is not None:
        raise _fail(source, fld, f"{value!r} {why}")
    assert isinstance(value, str)
    return value


def parse_processes(
    raw: Any, source: str, topo: Topology, base: str | Path = ".", field: str = "process"
) -> list[ProcessSpec]:
    """A scenario's [[process]] array -> ProcessSpecs, in the order given (they start in
    that order); `base` is the scenario file's directory (cwd is relative to it)."""
    if not isinstance(raw, list):
        raise _fail(source, field, "expected an array of tables [[process]]")
    nodes = set(topo.node_names())
    out: list[ProcessSpec] = []
    for i, item in enumerate(raw):
        at = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise _fail(source, at, "expected a table")
        for key in item:
            if key not in KEYS:
                raise _fail(source, f"{at}.{key}", f"unknown key (allowed: {', '.join(KEYS)})")
        for key in ("name", "nodes", "command"):
            if key not in item:
                raise _fail(source, f"{at}.{key}", "missing")
        name = names.check(item["name"], source, f"{at}.name", names.process_problem)
        if "." in name:
            raise _fail(
                source, f"{at}.name", f"{name!r}: no '.' (it would split process.NAME.METRIC)"
            )
        if any(p.name == name for p in out):
            raise _fail(source, f"{at}.name", f"duplicate process name {name!r}")
        kw: dict[str, Any] = {
            "name": name,
            "nodes": _nodes(source, item["nodes"], f"{at}.nodes", nodes),
            "command": _command(source, item["command"], f"{at}.command", nodes),
        }
        if "ready" in item:
            kw["ready"] = _ready(source, item["ready"], f"{at}.ready")
        if "env" in item:
            kw["env"] = _env(source, item["env"], f"{at}.env", nodes)
        on_exit = item.get("on_exit", "fail")
        if on_exit not in ON_EXIT:
            raise _fail(
                source, f"{at}.on_exit", f"expected one of {', '.join(ON_EXIT)}, got {on_exit!r}"
            )
        kw["on_exit"] = on_exit
        if "max_restarts" in item:
            n = item["max_restarts"]
            if on_exit != "restart":
                raise _fail(source, f"{at}.max_restarts", 'goes with on_exit = "restart"')
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_RESTARTS:
                raise _fail(source, f"{at}.max_restarts", f"expected 0..{MAX_RESTARTS}, got {n!r}")
            kw["max_restarts"] = n
        elif on_exit == "restart":
            kw["max_restarts"] = DEFAULT_MAX_RESTARTS
        if "start" in item:
            kw["start"] = _duration(source, item["start"], f"{at}.start")
        cwd = item.get("cwd", ".")
        if not isinstance(cwd, str) or not cwd or "\0" in cwd:
            raise _fail(source, f"{at}.cwd", "expected a directory (a non-empty string)")
        kw["cwd"] = str((Path(base) / cwd).absolute()) if not Path(cwd).is_absolute() else cwd
        if "metrics" in item:
            kw["metrics"] = _metrics(source, item["metrics"], f"{at}.metrics")
        out.append(ProcessSpec(**kw))
    return out


def assertion_problem(path: tuple[Any, ...], specs: list[ProcessSpec]) -> str | None:
    """Why an assertion path `process.NAME...` cannot hold for these processes, or None."""
    declared = [p.name for p in specs]
    if len(path) < 3 or not isinstance(path[1], str):
        return "expected process.NAME.METRIC (or process.NAME.exit_code, ...)"
    if path[1] not in declared:
        return f"no process {path[1]!r} (processes: {', '.join(declared) or 'none'})"
    return None
