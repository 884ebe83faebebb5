"""Names that become paths or kernel object names, and their validators. Pure.

Every name that ends up in a file name (scenario -> run folder, flow -> raw files,
process -> its log), a namespace (node -> ms-RUN-NODE under /run/netns) or an interface
is checked here before anything is created, so no name can climb out of its directory
("..", "/") or smuggle in an option ("-x") or a control character.

- `label_problem`: scenario, flow and process names: 1-64 of [A-Za-z0-9._-], starting
  with a letter or digit (so never "." or "..", never a leading "-").
- `node_problem`: node and segment names: 1-15 of [A-Za-z0-9_-], not starting with "-"
  (meshstress.model.topology.name_problem: the namespace is ms-RUN-NODE).
- `run_id_problem`: run ids: 1-6 lowercase letters or digits (meshstress.build.plan.RUN_ID_RE).

`check(value, source, field, problem)` raises the InputError that the CLI turns into one
line naming the file and the field, exit code 2.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from meshstress.errors import InputError

LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RUN_ID_RE = re.compile(r"[a-z0-9]{1,6}")


def label_problem(name: object) -> str | None:
    """Why `name` cannot name a scenario, flow or process (a file name), or None."""
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if not name:
        return "is empty"
    if len(name) > 64:
        return f"is {len(name)} characters long (at most 64)"
    if not LABEL_RE.fullmatch(name):
        return "must start with a letter or digit and hold only letters, digits, '.', '_', '-'"
    return None


def node_problem(name: object) -> str | None:
    """Why `name` cannot name a node or segment (part of a namespace name), or None."""
    from meshstress.model.topology import name_problem

    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    return name_problem(name)


def run_id_problem(run_id: object) -> str | None:
    """Why `run_id` cannot be a run id, or None."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        return "use 1-6 lowercase letters or digits"
    return None


# A process started by a scenario ([[process]], when it exists) is named like a flow.
process_problem = label_problem
scenario_problem = label_problem
flow_problem = label_problem


def check(value: object, source: str, field: str, problem: Callable[[object], str | None]) -> str:
    """`value` if `problem(value)` is None, else InputError(source, field, ...)."""
    why = problem(value)
    if why is not None:
        raise InputError(source, field, f"{value!r} {why}" if isinstance(value, str) else why)
    assert isinstance(value, str)
    return value
