"""Run state files under /run/meshstress/: what a run made, so anything can undo it.

The file is written before the first kernel object exists and rewritten as the run
grows (namespaces, processes), always atomically (write, fsync, rename). `down` and
`clean` trust it; `clean` also sweeps by prefix for what a crash left unrecorded.

Because teardown removes what a state file names, the state directory must be ours
alone: a real directory (not a symlink) owned by the user running meshstress (root, for
runs) that nobody else can write to. It is created 0700, an existing one of ours is
tightened to 0700, and any other (e.g. a MESHSTRESS_STATE_DIR that is someone else's or
world-writable) is refused. Run ids are checked before they become file names.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from meshstress import safefs
from meshstress.errors import InputError
from meshstress.model import names

STATE_DIR = os.environ.get("MESHSTRESS_STATE_DIR", "/run/meshstress")
# One save at a time: threads of a run record processes too (a restarted [[process]]),
# and two saves must not share the temporary file or put an older list last.
_SAVE_LOCK = threading.Lock()


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
        state_dir(create=True)
        tmp = f"{self.path}.tmp{os.getpid()}"
        with _SAVE_LOCK:
            with open(tmp, "w") as f:
                # one line: json's C encoder (indent would take its pure-Python path,
                # 3x slower on a thousand nodes, and a build saves three times)
                f.write(json.dumps(self.to_dict()))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)

    def to_dict(self) -> dict[str, Any]:
        """What the state file holds: dataclasses.asdict's result, without its deep copy
        of every interface list (a third of a save on a thousand nodes)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["processes"] = [asdict(p) for p in self.processes]
        return out

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


def state_dir(create: bool = False) -> str | None:
    """STATE_DIR once checked to be ours alone (see above); None if it does not exist and
    `create` is false. Raises MeshstressError for a directory we must not trust."""
    if not create and not os.path.lexists(STATE_DIR):
        return None
    if create:
        parent = os.path.dirname(os.path.abspath(STATE_DIR))
        os.makedirs(parent, exist_ok=True)
    return str(safefs.private_dir(STATE_DIR))


def state_path(run_id: str) -> str:
    why = names.run_id_problem(run_id)
    if why is not None:
        raise InputError("--run", "run", f"{run_id!r}: {why}")
    return os.path.join(STATE_DIR, f"{run_id}.json")


def run_files_dir(run_id: str) -> str:
    """Where a run keeps its per-node files: STATE_DIR/ms-RUN-files (teardown removes
    exactly this path, nothing else a state file may name)."""
    state_path(run_id)  # checks the id
    return os.path.join(STATE_DIR, f"ms-{run_id}-files")


def load(run_id: str) -> RunState | None:
    path = state_path(run_id)
    if state_dir() is None:
        return None
    try:
        with open(path) as f:
            st = RunState.from_dict(json.load(f))
    except FileNotFoundError:
        return None
    return st if st.run_id == run_id else None


def all_runs() -> list[RunState]:
    if state_dir() is None:
        return []
    try:
        files = sorted(os.listdir(STATE_DIR))
    except FileNotFoundError:
        return []
    runs = []
    for name in files:
        if name.endswith(".json") and names.run_id_problem(name[:-5]) is None:
            try:
                with open(os.path.join(STATE_DIR, name)) as f:
                    st = RunState.from_dict(json.load(f))
            except (OSError, ValueError, TypeError):
                continue
            if st.run_id == name[:-5]:  # a file claiming another run's id is not trusted
                runs.append(st)
    return runs


def _ours(name: object, prefix: str) -> bool:
    return (
        isinstance(name, str)
        and name.startswith(prefix)
        and len(name) > len(prefix)
        and "/" not in name
        and "\0" not in name
    )


def removable(st: RunState) -> tuple[list[str], list[str], list[str], list[str]]:
    """What teardown may remove of what `st` names: (namespaces, host links, files,
    problems). A namespace or host link must carry the run's prefix ms-RUN- (namespaces
    live in /run/netns, so no "/"); a file must be the run's own files directory. Anything
    else is refused with a problem, never removed."""
    prefix = f"ms-{st.run_id}-"
    problems: list[str] = []
    nss, links, files = [], [], []
    for ns in st.namespaces:
        if _ours(ns, prefix):
            nss.append(ns)
        else:
            problems.append(f"refusing to remove namespace {ns!r}: not a {prefix}* name")
    for link in st.host_links:
        if _ours(link, prefix) and len(link) <= 15:
            links.append(link)
        else:
            problems.append(f"refusing to remove host link {link!r}: not a {prefix}* name")
    allowed = {run_files_dir(st.run_id)}
    if st.run_id != "lab":  # the layout before ms-RUN-files
        allowed.add(os.path.join(STATE_DIR, st.run_id))
    for path in st.files:
        if isinstance(path, str) and os.path.normpath(path) == path and path in allowed:
            files.append(path)
        else:
            problems.append(
                f"refusing to remove {path!r}: not this run's files directory "
                f"{run_files_dir(st.run_id)}"
            )
    return nss, links, files, problems


def owner_alive(st: RunState) -> bool:
    """True if the process that made the run is still running: its PID exists and that
    process started before the run did (a recycled PID started later)."""
    return process_alive_since(st.owner_pid, st.created)


def process_alive_since(pid: int, created: float) -> bool:
    """Process `pid` runs, and started before `created` (unix time; 0.5 s of slack): not
    a recycled PID, not a zombie."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.create_time() <= created + 0.5 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
