"""Writing files as root without following anyone's symlinks, and giving them back.

- `make_dir(path)`: a directory of ours: created 0755 (or found owned by us or by the
  user who ran sudo, and writable by nobody else), never a symbolic link. Returns the
  directories it created, outermost first, so they can be given back.
- `write_file(dir, name, data)`: write `dir/name` atomically: a temporary file opened
  relative to a descriptor of `dir` with O_CREAT|O_EXCL|O_NOFOLLOW, then renamed over
  `name`; a symlink planted at `name` is replaced, never followed.
- `open_write(dir, name)`: the same as a context manager yielding a binary file.
- `private_dir(path)`: a directory only we may use (owner us, mode 0700, every directory
  above it root's or ours and not writable by others unless sticky), or an error.
- `give_back(path, owner)`: chown a tree to SUDO_UID/SUDO_GID, never following symlinks.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from meshstress.errors import MeshstressError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def sudo_owner() -> tuple[int, int] | None:
    """(SUDO_UID, SUDO_GID) when running as root under sudo for another user, else None."""
    if os.geteuid() != 0:
        return None
    try:
        uid, gid = int(os.environ["SUDO_UID"]), int(os.environ["SUDO_GID"])
    except (KeyError, ValueError):
        return None
    return None if uid == 0 else (uid, gid)


def _trusted_uids() -> set[int]:
    owner = sudo_owner()
    return {os.geteuid(), *([owner[0]] if owner else [])}


def dir_problem(st: os.stat_result, uids: set[int]) -> str | None:
    """Why a directory with this lstat cannot hold our files, or None. Pure."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid not in uids:
        return f"belongs to uid {st.st_uid}, not to {' or '.join(map(str, sorted(uids)))}"
    if st.st_mode & 0o022:
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def ancestors_problem(path: str | Path, owners: set[int] | None = None) -> str | None:
    """Why a directory above `path` would let someone else swap `path` (rename it away
    and put their own in its place), or None: an ancestor writable by group or others
    without the sticky bit, or (with `owners`) one owned by a uid outside `owners`."""
    p = Path(os.path.abspath(path))
    for anc in p.parents:
        try:
            st = os.stat(anc)  # a symlinked ancestor (/var/run) counts as its target
        except OSError:
            continue
        if owners is not None and st.st_uid not in owners:
            return f"lies in {anc}, which belongs to uid {st.st_uid}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"lies in {anc}, which others can write to (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def make_dir(path: str | Path, mode: int = 0o755) -> list[Path]:
    """Create `path` (and missing parents); refuse an existing one that is a symlink or
    that someone else could write to. Returns the directories created, outermost first."""
    p = Path(os.path.abspath(path))
    missing: list[Path] = []
    cur = p
    while not os.path.lexists(cur):
        missing.append(cur)
        cur = cur.parent
    created: list[Path] = []
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
            created.append(d)
        except FileExistsError:
            pass
    st = os.lstat(p)
    problem = dir_problem(st, _trusted_uids()) or ancestors_problem(p)
    if problem is not None:
        raise MeshstressError(f"{p} {problem}: refusing to write into it")
    return created


@contextlib.contextmanager
def _dir_fd(directory: str | Path, refusing: str = "write into it") -> Iterator[int]:
    """A descriptor of `directory`, opened without following a symlink."""
    try:
        fd = os.open(directory, _DIR_FLAGS)
    except OSError as exc:
        why = "is a symbolic link" if os.path.islink(directory) else exc.strerror
        raise MeshstressError(f"{directory} {why}: refusing to {refusing}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a plain file name")


@contextlib.contextmanager
def open_write(directory: str | Path, name: str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary file that becomes `directory/name` when the block ends without error."""
    _check_name(name)
    with _dir_fd(directory) as dfd:
        tmp = f".{name}.tmp{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        fd = os.open(tmp, _NEW_FILE, mode, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def write_file(directory: str | Path, name: str, data: str | bytes, mode: int = 0o644) -> Path:
    """Write `directory/name` atomically without following a symlink; returns its path."""
    with open_write(directory, name, mode) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(directory) / name


def read_bytes(directory: str | Path, name: str, limit: int = 64 << 20) -> bytes:
    """The contents of the regular file `directory/name`, opened without following a
    symlink (a link planted in a run folder is refused with OSError), at most `limit`
    bytes (more is refused too: a page must not swallow a huge or endless file)."""
    _check_name(name)
    with _dir_fd(directory, "read from it") as dfd:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{name} is not a regular file")
            data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{name} is larger than {limit} bytes")
    return data


def private_dir(path: str | Path) -> Path:
    """`path` as a directory only this user may use: created 0700 if missing, else it
    must be a real directory (not a symlink) owned by us that nobody else can write to;
    group and other permissions are then taken away (0700)."""
    p = Path(path)
    with contextlib.suppress(FileExistsError):
        p.mkdir(mode=0o700)
    with _dir_fd(p, "use it") as fd:
        st = os.fstat(fd)
        problem = dir_problem(st, {os.geteuid()}) or ancestors_problem(p, {0, os.geteuid()})
        if problem is not None:
            raise MeshstressError(f"{p} {problem}: refusing to use it")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o700)
    return p


def give_back(path: str | Path, owner: tuple[int, int] | None = None) -> int:
    """chown `path` and everything under it to `owner` (default: SUDO_UID/SUDO_GID;
    nothing to do without them). Symlinks are changed themselves, never followed.
    Returns how many entries were changed."""
    owner = owner if owner is not None else sudo_owner()
    if owner is None or not os.path.lexists(path):
        return 0
    uid, gid = owner
    os.chown(path, uid, gid, follow_symlinks=False)
    n = 1
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        return n
    for _root, dirs, files, rootfd in os.fwalk(path, follow_symlinks=False):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(name, uid, gid, dir_fd=rootfd, follow_symlinks=False)
                n += 1
    return n


def give_back_new(path: str | Path, since: float, owner: tuple[int, int] | None = None) -> int:
    """Like give_back, but only for entries under `path` that root made at or after
    `since` (st_uid 0, st_ctime >= since): what a root VM lab guest wrote into a user's
    shared tree. Returns how many entries were changed."""
    owner = owner if owner is not None else sudo_owner()
    if owner is None or not os.path.isdir(path):
        return 0
    uid, gid = owner
    n = 0
    for _root, dirs, files, rootfd in os.fwalk(path, follow_symlinks=False):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(name, dir_fd=rootfd, follow_symlinks=False)
                if st.st_uid == 0 and st.st_ctime >= since:
                    os.chown(name, uid, gid, dir_fd=rootfd, follow_symlinks=False)
                    n += 1
    return n


def create(directory: str | Path, name: str, mode: int = 0o644) -> BinaryIO:
    """A new file `directory/name` to write as it grows (a process's log), not renamed
    into place: whatever was at `name` (an old file, a planted symlink) is unlinked first,
    then the file is made with O_CREAT|O_EXCL|O_NOFOLLOW relative to a descriptor of
    `directory`, which is never a symlink itself. The caller closes it."""
    _check_name(name)
    with _dir_fd(directory) as dfd:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)
        fd = os.open(name, _NEW_FILE, mode, dir_fd=dfd)
    return os.fdopen(fd, "wb")
