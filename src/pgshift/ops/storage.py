"""Where archives live: a local directory, or any fsspec URL (``s3://bucket/prefix``).

Local paths need nothing beyond the standard library; a URL with a scheme needs the
``remote`` extra (``pip install 'pgshift[remote]'`` plus the scheme's own package,
e.g. ``s3fs``). A local archive appears under its final name only when complete
(written as ``.partial``, fsynced, renamed); object stores make a put atomic anyway.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgshift.errors import UsageError

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(location: str) -> bool:
    """True for ``scheme://...`` (not ``file://``, which is a local path)."""
    return bool(_SCHEME.match(location)) and not location.startswith("file://")


def _fsspec(location: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as exc:
        raise UsageError(f"{location} is a URL and fsspec is not installed",
                         hint="pip install 'pgshift[remote]' (and s3fs for s3://)") from exc
    try:
        fs, path = fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"cannot open {location}: {exc}",
                         hint="install the filesystem's package, e.g. pip install s3fs") from exc
    return fs, str(path)


@dataclass(frozen=True)
class Store:
    """One archive directory: local or remote, with the few operations archive needs."""

    location: str

    @property
    def remote(self) -> bool:
        return is_url(self.location)

    def _local_dir(self) -> Path:
        return Path(self.location.removeprefix("file://")).expanduser()

    def address(self, name: str) -> str:
        """The full location of ``name`` inside the store."""
        if self.remote:
            return self.location.rstrip("/") + "/" + name
        return str(self._local_dir() / name)

    def staging_dir(self) -> Path | None:
        """A local directory to build archives in (the store itself when local)."""
        if self.remote:
            return None
        d = self._local_dir()
        if d.exists() and not d.is_dir():
            raise UsageError(f"archive destination {d} is a file, not a directory",
                             hint="name a directory: pgshift archive app.db /backups/")
        d.mkdir(parents=True, exist_ok=True)
        return d

    def put(self, local: Path, name: str) -> None:
        """Publish the finished file ``local`` as ``name``."""
        if self.remote:
            fs, path = _fsspec(self.location)
            fs.makedirs(path, exist_ok=True)
            fs.put_file(str(local), path.rstrip("/") + "/" + name)
            return
        dest = self._local_dir() / name
        with local.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(local, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def names(self) -> list[str]:
        """The file names directly inside the store (empty when it does not exist)."""
        if self.remote:
            fs, path = _fsspec(self.location)
            if not fs.exists(path):
                return []
            return sorted(str(p).rstrip("/").rsplit("/", 1)[-1]
                          for p in fs.ls(path, detail=False))
        d = self._local_dir()
        return sorted(p.name for p in d.iterdir() if p.is_file()) if d.is_dir() else []

    def remove(self, name: str) -> None:
        if self.remote:
            fs, path = _fsspec(self.location)
            fs.rm(path.rstrip("/") + "/" + name)
        else:
            (self._local_dir() / name).unlink(missing_ok=True)


def fetch(location: str, into: Path) -> Path:
    """A local path holding the file at ``location`` (downloaded into ``into`` when remote)."""
    if not is_url(location):
        local = Path(location.removeprefix("file://")).expanduser()
        if not local.is_file():
            raise UsageError(f"archive not found: {local}", hint="ls the archive directory")
        return local
    fs, remote = _fsspec(location)
    if not fs.exists(remote):
        raise UsageError(f"archive not found: {location}", hint="list the store's contents")
    dest = into / remote.rstrip("/").rsplit("/", 1)[-1]
    with fs.open(remote, "rb") as src, dest.open("wb") as out:
        shutil.copyfileobj(src, out)
    return dest
