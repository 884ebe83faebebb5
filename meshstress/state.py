"""Run state files under /run/meshstress/: what a run made, so anything can undo it.

The file is written before the first kernel object exists and rewritten as the run
grows (namespaces, processes), always atomically (write, fsync, rename). `down` and
`clean` trust it; `clean` also sweeps by prefix for what a crash left unrecorded.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

STATE_DIR = os.environ.get("MESHSTRESS_STATE_DIR", "/run/meshstress")


@dataclass
class ProcessRecord:
    pid: int
    create_time: float  # psutil's, to tell a recycled PID from ours
    node: str | None
    role: str  # "babeld", "batmand", "traffic", ...
    argv: list[str] = field(default_factory=list)


@dataclass
class RunState:
    run_id: str
    topology: str
    source: str = ""
    status: str = "building"  # building | up | tearing-down
    created: float = field(default_factory=time.time)
    owner_pid: int = field(default_factory=os.getpid)
    routing: str = "none"
    namespaces: list[str] = field(default_factory=list)
    host_links: list[str] = field(default_factory=list)  # interfaces in the host namespace
    node_ns: dict[str, str] = field(default_factory=dict)
    node_addresses: dict[str, str] = field(default_factory=dict)
    interfaces: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    processes: list[ProcessRecord] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # paths the run made (per-node dirs)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return state_path(self.run_id)

    def save(self) -> None:
        os.makedirs(STATE_DIR, exist_ok=True)
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        procs = [ProcessRecord(**p) for p in data.pop("processes", [])]
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(processes=procs, **known)


def state_path(run_id: str) -> str:
    return os.path.join(STATE_DIR, f"{run_id}.json")


def load(run_id: str) -> RunState | None:
    try:
        with open(state_path(run_id)) as f:
            return RunState.from_dict(json.load(f))
    except FileNotFoundError:
        return None


def all_runs() -> list[RunState]:
    try:
        names = sorted(os.listdir(STATE_DIR))
    except FileNotFoundError:
        return []
    runs = []
    for name in names:
        if name.endswith(".json"):
            try:
                with open(os.path.join(STATE_DIR, name)) as f:
                    runs.append(RunState.from_dict(json.load(f)))
            except (OSError, ValueError, TypeError):
                continue
    return runs
