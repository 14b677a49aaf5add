"""``pgshift archive``: keep blue's SQLite database and config files, provably intact.

An archive is a plain tar (``<stem>-<UTC stamp>.pgshift.tar``) whose first member is
``manifest.json``; every other member is zstd-compressed on its own, so a damaged
member is named by ``verify_archive`` instead of making the whole archive unreadable.
The manifest records, per member, the sha256 of the stored (compressed) bytes and of
the content, and for the database the source's row counts and the copy's
``PRAGMA integrity_check``. The database is an online backup taken with
:func:`pgshift.source.snapshot.take_snapshot`, consistent while blue still runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from pgshift.errors import ExitCode, PgshiftError, SourceError, UsageError
from pgshift.ops.secrets import redact_config
from pgshift.ops.storage import Store, fetch
from pgshift.source.snapshot import open_source, take_snapshot

FORMAT = "pgshift-archive/1"
MANIFEST = "manifest.json"
SUFFIX = ".pgshift.tar"
CHUNK = 1 << 20
# zstd level 3 (the library's default). Measured on the seed at --scale 200000 (98 MB,
# 442k rows, whole archive incl. snapshot and integrity_check, 2 shared cores): level 3
# 2.55x in 1.7 s, level 9 2.79x in 3.4 s, level 19 3.23x in 151 s (docs/ops.md).
DEFAULT_LEVEL = 3


@dataclass(frozen=True)
class Member:
    """One stored file: where it came from, its sizes and both checksums."""

    name: str
    kind: str  # "database" or "config"
    source: str
    bytes: int  # stored (compressed)
    sha256: str  # of the stored bytes
    content_bytes: int
    content_sha256: str
    redacted_lines: int | None = None  # config files: lines whose secrets were removed

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class ArchiveResult:
    """One archive written, and what retention removed."""

    location: str
    name: str
    bytes: int
    seconds: float
    members: list[Member]
    row_counts: dict[str, int]
    integrity_check: str
    snapshot_taken_at: str
    removed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"location": self.location, "name": self.name, "bytes": self.bytes,
                "seconds": self.seconds, "members": [m.to_dict() for m in self.members],
                "row_counts": self.row_counts, "integrity_check": self.integrity_check,
                "snapshot_taken_at": self.snapshot_taken_at, "removed": self.removed}


@dataclass(frozen=True)
class MemberCheck:
    name: str
    ok: bool
    problem: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class VerifyArchiveResult:
    """The archive re-checked: every member's checksums, and the database restored."""

    location: str
    members: list[MemberCheck]
    restored_integrity: str | None
    row_counts_match: bool
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(m.ok for m in self.members)

    def to_dict(self) -> dict[str, object]:
        return {"location": self.location, "ok": self.ok,
                "members": [m.to_dict() for m in self.members],
                "restored_integrity": self.restored_integrity,
                "row_counts_match": self.row_counts_match, "problems": self.problems}


class _Hashing(io.RawIOBase):
    """A write-only file that forwards to ``out`` and hashes what passes."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.sha, self.count = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.out.write(view)
        self.sha.update(view)
        self.count += len(view)
        return len(view)


def _compress(src: IO[bytes], dest: Path, level: int) -> tuple[int, str, int, str]:
    """zstd ``src`` into ``dest``; (stored bytes, stored sha, content bytes, content sha)."""
    content = hashlib.sha256()
    size = 0
    with dest.open("wb") as raw:
        stored = _Hashing(raw)
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
        # _Hashing is a RawIOBase; the stub asks for IO[bytes], which it satisfies at runtime.
        with cctx.stream_writer(stored, closefd=False) as writer:  # type: ignore[arg-type]
            while chunk := src.read(CHUNK):
                content.update(chunk)
                size += len(chunk)
                writer.write(chunk)
    return stored.count, stored.sha.hexdigest(), size, content.hexdigest()


def integrity_and_counts(path: Path) -> tuple[str, dict[str, int]]:
    """``PRAGMA integrity_check`` of a database file and the row count of every table."""
    con = open_source(path, immutable=True)
    try:
        rows = [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
        tables = [str(r[0]) for r in con.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]
        counts = {t: int(con.execute(f'SELECT count(*) FROM "{t.replace(chr(34), chr(34) * 2)}"')
                         .fetchone()[0]) for t in tables}
    except sqlite3.DatabaseError as exc:
        return f"unreadable: {exc}", {}
    finally:
        con.close()
    return "; ".join(rows[:5]), counts


def archive_name(stem: str) -> str:
    """``<stem>-<UTC stamp with milliseconds>.pgshift.tar``: names sort by time."""
    now = time.time()
    return f"{stem}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}" \
           f"{int(now * 1000) % 1000:03d}Z{SUFFIX}"


def archive(sqlite_path: Path, dest: str, *, config_files: Sequence[Path] = (),
            include_secrets: bool = False, keep: int | None = None,
            require_wal: bool = False, level: int = DEFAULT_LEVEL) -> ArchiveResult:
    """Back up ``sqlite_path`` and ``config_files`` into one archive in ``dest``.

    ``dest`` is a local directory (created if missing) or an fsspec URL. Config files
    are stored with secret values redacted unless ``include_secrets``. ``keep`` keeps
    only the newest N archives of this database in ``dest`` (after the new one is
    complete). ``require_wal`` refuses a source not in WAL mode (a backup of a
    rollback-journal database blocks its writers while it runs).

    Raises UsageError for bad input, SourceError when the copy fails its integrity check.
    """
    if keep is not None and keep < 1:
        raise UsageError(f"--keep {keep} would delete the archive just written",
                         hint="--keep 1 or more")
    for cfg in config_files:
        if not cfg.is_file():
            raise UsageError(f"config file not found: {cfg}", hint="check the path")
    started = time.perf_counter()
    store = Store(dest)
    name = archive_name(sqlite_path.stem)
    try:
        staging = store.staging_dir()
    except OSError as exc:
        raise _unwritable(dest, exc) from exc
    with tempfile.TemporaryDirectory(prefix="pgshift-archive-") as tmp_name:
        tmp = Path(tmp_name)
        snap = take_snapshot(sqlite_path, tmp / "snapshot", require_wal=require_wal)
        integrity, counts = integrity_and_counts(snap.path)
        if integrity != "ok":
            raise SourceError(f"the backup of {sqlite_path} fails PRAGMA integrity_check: "
                              f"{integrity}", operation="archive",
                              hint=f"sqlite3 {sqlite_path} 'PRAGMA integrity_check'")
        members: list[tuple[Member, Path]] = []
        with snap.path.open("rb") as fh:
            members.append(_member(fh, tmp / "db.zst", f"database/{sqlite_path.name}.zst",
                                   "database", str(sqlite_path.resolve()), level, None))
        for i, cfg in enumerate(config_files):
            try:
                data = cfg.read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read {cfg}: {exc.strerror or exc}",
                                 hint="run as a user that can read it") from exc
            redacted: int | None = None
            if not include_secrets:
                try:
                    text, redacted = redact_config(data.decode())
                except UnicodeDecodeError as exc:
                    raise UsageError(f"{cfg} is not text, so its secrets cannot be redacted",
                                     hint="leave it out, or pass --include-secrets") from exc
                data = text.encode()
            members.append(_member(io.BytesIO(data), tmp / f"cfg{i}.zst",
                                   f"config/{i:02d}-{cfg.name}.zst", "config",
                                   str(cfg.resolve()), level, redacted))
        manifest = {
            "format": FORMAT, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": str(sqlite_path.resolve()),
            # The snapshot's own path was a temporary file: only its facts are kept.
            "snapshot": {k: v for k, v in snap.to_dict().items() if k not in ("path", "source")},
            "integrity_check": integrity, "row_counts": counts,
            "secrets_included": include_secrets,
            "members": [m.to_dict() for m, _ in members],
        }
        out = (staging or tmp) / (name + ".partial")
        try:
            _write_tar(out, manifest, members)
            size = out.stat().st_size
            store.put(out, name)
        except OSError as exc:
            out.unlink(missing_ok=True)  # never leave a half-written archive beside good ones
            raise _unwritable(dest, exc) from exc
    removed = _retain(store, sqlite_path.stem, keep) if keep else []
    return ArchiveResult(location=store.address(name), name=name, bytes=size,
                         seconds=round(time.perf_counter() - started, 3),
                         members=[m for m, _ in members], row_counts=counts,
                         integrity_check=integrity, snapshot_taken_at=snap.taken_at,
                         removed=removed)


def _unwritable(dest: str, exc: OSError) -> UsageError:
    return UsageError(f"cannot write the archive to {dest}: {exc.strerror or exc}",
                      hint="check the destination's permissions and free space",
                      operation="archive")


def _member(src: IO[bytes], path: Path, name: str, kind: str, source: str, level: int,
            redacted: int | None) -> tuple[Member, Path]:
    stored, sha, size, content_sha = _compress(src, path, level)
    return Member(name, kind, source, stored, sha, size, content_sha, redacted), path


def _write_tar(out: Path, manifest: dict[str, object],
               members: list[tuple[Member, Path]]) -> None:
    body = json.dumps(manifest, indent=2).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime = len(body), int(time.time())
        tar.addfile(info, io.BytesIO(body))
        for member, path in members:
            info = tar.gettarinfo(str(path), arcname=member.name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as fh:
                tar.addfile(info, fh)


def _retain(store: Store, stem: str, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` archives of ``stem`` (names sort by time)."""
    pattern = re.compile(rf"^{re.escape(stem)}-\d{{8}}T\d{{9}}Z{re.escape(SUFFIX)}$")
    ours = [n for n in store.names() if pattern.match(n)]
    doomed = ours[:-keep]
    for name in doomed:
        store.remove(name)
    return doomed


def verify_archive(location: str) -> VerifyArchiveResult:
    """Re-check every member's checksums and restore the database to a temp file.

    A member whose stored or content checksum differs from the manifest, a missing or
    unexpected member, a restored database that fails ``PRAGMA integrity_check`` or whose
    row counts differ from the manifest's: each is reported, ``ok`` is False.
    Raises UsageError when ``location`` is not a pgshift archive at all.
    """
    with tempfile.TemporaryDirectory(prefix="pgshift-verify-") as tmp_name:
        tmp = Path(tmp_name)
        with _open_tar(fetch(location, tmp), location) as tar:
            manifest = _read_manifest(tar, location)
            result = VerifyArchiveResult(location, [], None, False)
            listed = {str(m["name"]) for m in manifest["members"]}
            present = {m.name for m in tar.getmembers() if m.name != MANIFEST}
            result.problems += [f"member {n} is in the archive but not in the manifest"
                                for n in sorted(present - listed)]
            for entry in manifest["members"]:
                # the database is restored to a file (it may be large); configs only hashed
                check = _check_member(tar, entry, tmp / "restored.sqlite"
                                      if entry["kind"] == "database" else None)
                result.members.append(check)
                if entry["kind"] == "database" and check.ok:
                    restored = tmp / "restored.sqlite"
                    result.restored_integrity, counts = integrity_and_counts(restored)
                    result.row_counts_match = counts == manifest["row_counts"]
                    if result.restored_integrity != "ok":
                        result.problems.append("the restored database fails integrity_check: "
                                               f"{result.restored_integrity}")
                    if not result.row_counts_match:
                        result.problems.append("the restored database's row counts differ "
                                               "from the manifest's")
    return result


@dataclass
class RestoreResult:
    """An archive's files written back: each checked against the manifest first."""

    location: str
    database: str
    configs: list[str]
    row_counts: dict[str, int]
    integrity_check: str
    secrets_included: bool
    snapshot_taken_at: str | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def restore_archive(location: str, dest: Path, *, force: bool = False) -> RestoreResult:
    """Write an archive's database (under its original file name) and config files
    (``config/NN-name``) into the directory ``dest``.

    Nothing is written unless every member's checksums, the database's
    ``PRAGMA integrity_check`` and its row counts agree with the manifest: members are
    first restored beside ``dest``, then renamed into place. An existing file is
    replaced only with ``force``. Config files come back as archived: redacted unless
    the archive was made with ``--include-secrets``.

    Raises UsageError (not an archive, a file in the way, ``dest`` unwritable) and
    ArchiveDamaged (a check failed; the damaged member is named).
    """
    try:
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".pgshift-restore-", dir=dest))
    except OSError as exc:
        raise UsageError(f"cannot write to {dest}: {exc.strerror or exc}",
                         hint="choose a writable directory with --to") from exc
    try:
        with _open_tar(fetch(location, staging), location) as tar:
            manifest = _read_manifest(tar, location)
            planned: list[tuple[dict[str, Any], Path]] = []
            for entry in manifest["members"]:
                name = str(entry["name"])
                # names come from the archive: only the shapes pgshift writes, nothing
                # that could climb out of dest
                rel = Path(str(manifest["source"])).name if entry["kind"] == "database" \
                    else name.removesuffix(".zst")
                if not (re.fullmatch(r"config/\d{2}-[^/\\]+", rel) or entry["kind"] ==
                        "database") or rel in ("", ".", "..") or rel.endswith("/.."):
                    raise UsageError(f"{location}: member {name!r} has a name pgshift does "
                                     "not write", hint="is this a pgshift archive?")
                planned.append((entry, dest / rel))
            in_the_way = [str(t) for _, t in planned if t.exists()]
            if in_the_way and not force:
                raise UsageError(f"{in_the_way[0]} exists; a restore never overwrites "
                                 "silently", hint="pass --force to replace it, or restore "
                                                   "--to another directory")
            for i, (entry, _) in enumerate(planned):
                check = _check_member(tar, entry, staging / f"{i}.restored")
                if not check.ok:
                    raise ArchiveDamaged(f"{location}: member {check.name} {check.problem}; "
                                         "nothing was restored",
                                         hint="restore from another archive of this "
                                              "database")
        db = next(staging / f"{i}.restored" for i, (e, _) in enumerate(planned)
                  if e["kind"] == "database")
        integrity, counts = integrity_and_counts(db)
        if integrity != "ok" or counts != manifest["row_counts"]:
            raise ArchiveDamaged(f"{location}: the restored database "
                                 + (f"fails integrity_check: {integrity}" if integrity != "ok"
                                    else "has other row counts than the manifest")
                                 + "; nothing was restored",
                                 hint="restore from another archive of this database")
        for i, (_, target) in enumerate(planned):
            target.parent.mkdir(parents=True, exist_ok=True)
            (staging / f"{i}.restored").replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RestoreResult(
        location=location,
        database=str(next(t for e, t in planned if e["kind"] == "database")),
        configs=[str(t) for e, t in planned if e["kind"] != "database"],
        row_counts=counts, integrity_check=integrity,
        secrets_included=bool(manifest.get("secrets_included")),
        snapshot_taken_at=(manifest.get("snapshot") or {}).get("taken_at"))


class ArchiveDamaged(PgshiftError):
    """A member's checksum, the restored database's integrity or row counts disagree
    with the manifest (exit 1, like ``archive verify``)."""

    exit_code = ExitCode.DIFFERENCES


def _open_tar(path: Path, location: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise UsageError(f"{location} is not a pgshift archive: {exc}",
                         hint="pgshift archive verify PATH/TO/<name>.pgshift.tar") from exc


def _read_manifest(tar: tarfile.TarFile, location: str) -> dict[str, Any]:
    try:
        fh = tar.extractfile(MANIFEST)
        manifest = json.loads(fh.read()) if fh else None
    except (KeyError, ValueError, tarfile.TarError) as exc:
        raise UsageError(f"{location} has no readable {MANIFEST}: {exc}",
                         hint="is this a pgshift archive?") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f"{location} is not a {FORMAT} archive",
                         hint="archives are written by pgshift archive")
    return manifest


def _check_member(tar: tarfile.TarFile, entry: dict[str, Any],
                  out_path: Path | None) -> MemberCheck:
    """Read ``entry`` from ``tar`` checking both checksums; the content is written to
    ``out_path`` when given (still to be trusted only when the check is ok)."""
    name = str(entry["name"])
    try:
        fh = tar.extractfile(name)
    except KeyError:
        fh = None
    if fh is None:
        return MemberCheck(name, False, "missing from the archive")
    stored, content = hashlib.sha256(), hashlib.sha256()
    undecodable: str | None = None
    with (out_path.open("wb") if out_path else io.BytesIO()) as out:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        while chunk := fh.read(CHUNK):
            stored.update(chunk)
            if undecodable is None:
                try:
                    data = dobj.decompress(chunk)
                except zstandard.ZstdError as exc:
                    undecodable = str(exc)
                    continue
                content.update(data)
                out.write(data)
    if stored.hexdigest() != entry["sha256"]:
        return MemberCheck(name, False, "stored bytes do not match the manifest's sha256 "
                                        "(the member is corrupted)")
    if undecodable is not None:
        return MemberCheck(name, False, f"does not decompress: {undecodable}")
    if content.hexdigest() != entry["content_sha256"]:
        return MemberCheck(name, False, "decompressed content does not match the manifest")
    return MemberCheck(name, True)
