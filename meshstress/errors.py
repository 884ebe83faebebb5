"""Errors that the CLI turns into one line and an exit code."""

from __future__ import annotations


class MeshstressError(Exception):
    """A failure meant for the user: printed as one line, exit code 1."""

    exit_code = 1


class InputError(MeshstressError):
    """Bad input: one line naming the file and the field, exit code 2, nothing created."""

    exit_code = 2

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        self.message = message
        super().__init__(f"{source}: {field}: {message}")


class CapabilityError(MeshstressError):
    """The host lacks something a step needs; the message names it and the remedy."""

    exit_code = 3
