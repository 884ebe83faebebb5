"""Routing settings: typed fields per backend, validated with errors naming the field. Pure.

Settings come from the topology (`topo.routing_settings`, flat: {"hello_interval": "1s"};
a nested block named after the backend, {"babeld": {...}}, is merged over the flat
keys so one file can carry settings for several backends) and per node
(`node.settings["routing"]`, same keys, overriding the topology's for that node).
Durations go through meshstress.model.units.parse_duration; values come back in SI units
(seconds), ints or bools.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshstress.errors import InputError
from meshstress.model.units import parse_duration

BACKEND_NAMES = ("none", "static", "babeld", "batmand", "batman-adv")


@dataclass(frozen=True)
class Field:
    name: str
    parse: Callable[[object], Any]  # raises ValueError with a short reason
    default: Any
    per_node: bool = True  # may a node override it?
    doc: str = ""


def duration(lo: float, hi: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if not lo <= seconds <= hi:
            raise ValueError(f"must be between {lo:g}s and {hi:g}s, got {value!r}")
        return seconds

    return parse


def integer(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected an integer {lo}..{hi}, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected an integer {lo}..{hi}, got {value!r}") from None
        if not lo <= number <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value!r}")
        return number

    return parse


_TRUE = {"true", "yes", "on", "1", "enabled"}
_FALSE = {"false", "no", "off", "0", "disabled"}


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def choice(*options: str, aliases: Mapping[str, str] | None = None) -> Callable[[object], str]:
    table = {o.lower(): o for o in options}
    table.update({k.lower(): v for k, v in (aliases or {}).items()})

    def parse(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in table:
            return table[value.strip().lower()]
        raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")

    return parse


def validate(
    fields: tuple[Field, ...],
    raw: Mapping[str, Any] | None,
    *,
    backend: str,
    source: str,
    prefix: str = "routing",
    node: bool = False,
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Parse `raw` against `fields`; return every field's value (defaults or `base` filled in).

    Unknown keys, wrong types and node-level overrides of topology-only fields raise
    InputError(source, "<prefix>.<key>", reason)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InputError(source, prefix, f"expected a mapping of settings, got {raw!r}")
    flat: dict[str, tuple[Any, str]] = {}  # key -> (value, field path for messages)
    for key, value in raw.items():
        if key in BACKEND_NAMES:
            if key != backend:
                continue  # settings for another backend: not ours to judge
            if not isinstance(value, Mapping):
                raise InputError(source, f"{prefix}.{key}", "expected a mapping of settings")
            continue
        flat[key] = (value, f"{prefix}.{key}")
    nested = raw.get(backend)
    if isinstance(nested, Mapping):
        flat.update({k: (v, f"{prefix}.{backend}.{k}") for k, v in nested.items()})
    by_name = {f.name: f for f in fields}
    out: dict[str, Any] = dict(base) if base is not None else {f.name: f.default for f in fields}
    for key, (value, where) in flat.items():
        spec = by_name.get(key)
        if spec is None:
            known = ", ".join(sorted(by_name)) or "none"
            raise InputError(source, where, f"unknown setting for {backend} (known: {known})")
        if node and not spec.per_node:
            raise InputError(source, where, "can only be set for the whole topology, not per node")
        try:
            out[key] = spec.parse(value)
        except ValueError as exc:
            raise InputError(source, where, str(exc)) from None
    return out
