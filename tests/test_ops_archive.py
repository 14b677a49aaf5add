"""pgshift archive: round trip, a corrupted member named, secrets, retention, URLs."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import threading
import uuid
from pathlib import Path

import pytest
import zstandard

from pgshift.cli.main import main
from pgshift.demo.seed import seed
from pgshift.errors import UsageError
from pgshift.ops.archive import ArchiveDamaged, archive, restore_archive, verify_archive

ENV = ("DATABASE_URL=postgresql://app:hunter2@db:5432/app\n"
       "export SECRET_KEY='s3cr3t-value'\n"
       "DEBUG=0\n")
COMPOSE = ("services:\n  web:\n    image: app:1.4\n    environment:\n"
           "      - DB_PASSWORD=compose-pw\n      STRIPE_API_KEY: sk_live_123\n"
           "      WORKERS: 4\n")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archive") / "app.db"
    seed(path, 500)
    return path


def _configs(tmp_path: Path) -> list[Path]:
    (tmp_path / ".env").write_text(ENV)
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    return [tmp_path / ".env", tmp_path / "compose.yaml"]


def _member_text(archive_path: Path, name: str) -> str:
    with tarfile.open(archive_path) as tar:
        fh = tar.extractfile(name)
        assert fh is not None
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(fh.read())).read().decode()


def _flip_byte(archive_path: Path, member: str, at: int = 10) -> None:
    with tarfile.open(archive_path) as tar:
        offset = tar.getmember(member).offset_data + at
    with archive_path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_round_trip_and_a_corrupted_member_is_named(seeded: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    result = archive(seeded, str(tmp_path / "out"), config_files=_configs(tmp_path))
    path = Path(result.location)
    assert path.is_file() and result.integrity_check == "ok"
    with sqlite3.connect(seeded) as con:
        assert result.row_counts["jobs"] == con.execute("SELECT count(*) FROM jobs").fetchone()[0]
    assert [m.kind for m in result.members] == ["database", "config", "config"]

    ok = verify_archive(str(path))
    assert ok.ok and ok.restored_integrity == "ok" and ok.row_counts_match
    assert main(["archive", "verify", str(path)]) == 0

    _flip_byte(path, "config/01-compose.yaml.zst")
    damaged = verify_archive(str(path))
    assert not damaged.ok
    bad = [m for m in damaged.members if not m.ok]
    assert [m.name for m in bad] == ["config/01-compose.yaml.zst"]
    assert "corrupted" in str(bad[0].problem)
    assert damaged.row_counts_match  # the database member is still fine
    capsys.readouterr()
    assert main(["archive", "verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: archive verification failed: config/01-compose.yaml.zst")


def test_a_corrupted_database_member_is_detected(seeded: Path, tmp_path: Path) -> None:
    path = Path(archive(seeded, str(tmp_path)).location)
    _flip_byte(path, "database/app.db.zst", at=5000)
    damaged = verify_archive(str(path))
    assert not damaged.ok and not damaged.members[0].ok
    assert damaged.restored_integrity is None  # never restored from corrupted bytes


def test_secrets_are_redacted_unless_included(seeded: Path, tmp_path: Path) -> None:
    configs = _configs(tmp_path)
    redacted = archive(seeded, str(tmp_path / "a"), config_files=configs)
    env = _member_text(Path(redacted.location), "config/00-.env.zst")
    compose = _member_text(Path(redacted.location), "config/01-compose.yaml.zst")
    for secret in ("hunter2", "s3cr3t-value", "compose-pw", "sk_live_123"):
        assert secret not in env + compose
    assert "DEBUG=0" in env and "WORKERS: 4" in compose and "image: app:1.4" in compose
    assert "postgresql://app:***@db:5432/app" in env
    assert [m.redacted_lines for m in redacted.members[1:]] == [2, 2]

    kept = archive(seeded, str(tmp_path / "b"), config_files=configs, include_secrets=True)
    assert _member_text(Path(kept.location), "config/00-.env.zst") == ENV


def test_keep_n_removes_only_the_oldest_archives_of_this_database(seeded: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "other-20200101T000000000Z.pgshift.tar").write_bytes(b"another database's")
    names = [archive(seeded, str(out), keep=2).name for _ in range(3)]
    assert len(set(names)) == 3
    remaining = sorted(p.name for p in out.iterdir())
    assert remaining == sorted([*names[1:], "other-20200101T000000000Z.pgshift.tar"])


def test_consistent_while_the_app_writes(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    con.execute("CREATE TABLE totals (n INTEGER NOT NULL)")
    con.execute("INSERT INTO totals VALUES (0)")
    stop, started = threading.Event(), threading.Event()

    def write() -> None:
        while not stop.is_set():
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT INTO items (v) VALUES (?)", [("x" * 100,)] * 20)
            con.execute("UPDATE totals SET n = n + 20")
            con.execute("COMMIT")
            started.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert started.wait(10)
        results = [archive(db, str(tmp_path / "out"), require_wal=True) for _ in range(3)]
    finally:
        stop.set()
        writer.join()
        con.close()
    for result in results:
        check = verify_archive(result.location)
        assert check.ok
        restored = tmp_path / "check.db"
        with tarfile.open(result.location) as tar:
            fh = tar.extractfile("database/live.db.zst")
            assert fh is not None
            restored.write_bytes(zstandard.ZstdDecompressor().stream_reader(fh).read())
        with sqlite3.connect(restored) as rc:  # one point in time: the total matches the rows
            items, total = rc.execute(
                "SELECT (SELECT count(*) FROM items), (SELECT n FROM totals)").fetchone()
        assert items == total == result.row_counts["items"] > 0
        restored.unlink()


def test_fsspec_url_round_trip_and_retention(seeded: Path) -> None:
    pytest.importorskip("fsspec")
    base = f"memory://pgshift-test-{uuid.uuid4().hex[:8]}/backups"
    first = archive(seeded, base, keep=1)
    second = archive(seeded, base, keep=1)
    assert second.location == f"{base}/{second.name}" and second.removed == [first.name]
    assert verify_archive(second.location).ok


def test_not_an_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UsageError, match="not a pgshift archive"):
        verify_archive(str(junk))
    assert main(["archive", "verify", str(tmp_path / "missing.tar")]) == 2
    assert capsys.readouterr().err.startswith("Error: archive not found")


def test_cli_create_is_the_default_and_json(seeded: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["archive", "--keep", "1", str(seeded), str(tmp_path), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["integrity_check"] == "ok" and Path(made["location"]).is_file()
    assert main(["archive", "verify", made["location"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_an_unwritable_destination_is_bad_input(seeded: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["archive", str(seeded), str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"Error: cannot write the archive to {blocker / 'sub'}")
    assert main(["archive", str(seeded), str(blocker)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def _rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as con:
        return con.execute("SELECT * FROM jobs ORDER BY id").fetchall()


def test_restore_writes_back_exactly_what_was_archived(seeded: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    made = archive(seeded, str(tmp_path / "out"), config_files=_configs(tmp_path))
    dest = tmp_path / "restored"
    got = restore_archive(made.location, dest)
    assert got.database == str(dest / "app.db") and got.row_counts == made.row_counts
    assert _rows(dest / "app.db") == _rows(seeded)
    assert got.configs == [str(dest / "config/00-.env"), str(dest / "config/01-compose.yaml")]
    env = (dest / "config/00-.env").read_text()
    assert "DEBUG=0" in env and "hunter2" not in env and not got.secrets_included
    assert sorted(p.name for p in dest.iterdir()) == ["app.db", "config"]  # no staging left

    # never over an existing file without --force; with it, replaced
    (dest / "app.db").write_bytes(b"something else")
    with pytest.raises(UsageError, match="exists; a restore never overwrites"):
        restore_archive(made.location, dest)
    assert (dest / "app.db").read_bytes() == b"something else"
    assert main(["archive", "restore", made.location, "--to", str(dest)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["archive", "restore", made.location, "--to", str(dest), "--force",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["integrity_check"] == "ok"
    assert _rows(dest / "app.db") == _rows(seeded)
    assert main(["archive", "restore", made.location, "--to", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert f"database: {tmp_path / 'again' / 'app.db'}" in out and "secrets redacted" in out


def test_restore_from_a_damaged_archive_writes_nothing(seeded: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    path = Path(archive(seeded, str(tmp_path / "out"), config_files=_configs(tmp_path)
                        ).location)
    _flip_byte(path, "config/01-compose.yaml.zst")
    dest = tmp_path / "restored"
    with pytest.raises(ArchiveDamaged, match=r"config/01-compose\.yaml\.zst"):
        restore_archive(str(path), dest)
    assert list(dest.iterdir()) == []  # not even the intact database
    assert main(["archive", "restore", str(path), "--to", str(dest)]) == 1
    assert "nothing was restored" in capsys.readouterr().err


def test_restore_refuses_member_names_pgshift_does_not_write(tmp_path: Path) -> None:
    manifest = {"format": "pgshift-archive/1", "source": "/x/app.db", "row_counts": {},
                "members": [{"name": "config/../../evil.zst", "kind": "config"}]}
    bad = tmp_path / "bad.pgshift.tar"
    body = json.dumps(manifest).encode()
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    with pytest.raises(UsageError, match="a name pgshift does not write"):
        restore_archive(str(bad), tmp_path / "dest")
    assert not (tmp_path / "evil").exists()
