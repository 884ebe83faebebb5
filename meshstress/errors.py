"""Errors that the CLI turns into one line and an exit code."""

from __future__ import annotations

import unicodedata


def one_line(text: str) -> str:
    """`text` with every character that could break a line or drive a terminal (control
    characters, line and paragraph separators) written as an escape: a file name or a
    value from the user stays on its line."""
    if text.isprintable():
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp")
        else ch
        for ch in text
    )


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
        super().__init__(one_line(f"{source}: {field}: {message}"))


class CapabilityError(MeshstressError):
    """The host lacks something a step needs; the message names it and the remedy."""

    exit_code = 3


# errno -> what it means when the kernel refuses to make a link or qdisc kind
_KERNEL_WORDS = {
    2: "not in this kernel",  # ENOENT: no module or type of that name
    95: "not supported by this kernel",  # EOPNOTSUPP
    1: "not permitted",  # EPERM
    13: "permission denied",  # EACCES
}


def plain_error(exc: BaseException) -> str:
    """One line of plain words for an exception: an errno (OSError, pyroute2's NetlinkError,
    whose str() is a tuple like "(95, 'Operation not supported')") as a sentence with the
    system's wording in parentheses, a file name kept; anything else its first line."""
    import os

    code = getattr(exc, "code", None)  # NetlinkError
    if not isinstance(code, int) or isinstance(code, bool):
        code = getattr(exc, "errno", None)
    if isinstance(code, int) and not isinstance(code, bool) and code > 0:
        try:
            system = os.strerror(code)
        except ValueError:
            system = f"error {code}"
        words = _KERNEL_WORDS.get(code)
        text = f"{words} ({system.lower()})" if words else system
        filename = getattr(exc, "filename", None)
        return f"{filename}: {text}" if filename else text
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Interrupted(BaseException):
    """SIGTERM during a build or a run: unwound like Ctrl-C, so `finally` cleans up."""
