"""Opening a catalogue: the right file whatever its name, read commands never write, damage is
found on open and by `check`, `backup` refuses damage and leaves nothing on failure, and SQLite
errors say what happened."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from builders import run_cli, scan_params, scanned_catalogue

import labeller.catalogue as catalogue_module
from labeller.catalogue import Catalogue, describe_sqlite_error
from labeller.errors import UserError
from labeller.records import PredictionKind


@pytest.fixture(scope="module")
def scanned_db(tmp_path_factory, tiny_model, tiny_model_dir, tiny_corpus) -> Path:
    params = scan_params(tiny_model_dir, tiny_corpus, tokens=300)
    path = tmp_path_factory.mktemp("open") / "c.db"
    return scanned_catalogue(path, tiny_model, params, batch_size=4)


@pytest.fixture()
def db(scanned_db, tmp_path) -> Path:
    copy = tmp_path / "c.db"
    copy.write_bytes(scanned_db.read_bytes())
    return copy


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def damage(path: Path) -> None:
    """Scribble over the start of every fifth page of the second half: the header, the schema
    and the small early tables stay readable, so only a check of the pages finds it."""
    data = bytearray(path.read_bytes())
    for page in range(len(data) // 8192 * 4096, len(data), 5 * 4096):
        data[page : page + 100] = os.urandom(100)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["a#b.db", "c?d.db", "e%41.db", "f%.db"])
def test_paths_with_uri_characters_open_the_named_file(db, tmp_path, name):
    odd = tmp_path / name
    odd.write_bytes(db.read_bytes())
    before = sorted(p.name for p in tmp_path.iterdir())
    (model,) = json.loads(run_cli("models", "--db", odd, "--format", "json").output)
    assert model["neurons"] == 96
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no stray file appeared


def test_read_commands_never_change_a_foreign_file_without_tables(tmp_path):
    foreign = tmp_path / "views.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("create view v as select 1 as x")
        conn.execute("pragma user_version = 7")
    conn.close()
    before = digest(foreign)
    for command in ("models", "scans"):
        line = one_error_line(run_cli(command, "--db", foreign, ok=False))
        assert "not a labeller catalogue" in line
    assert digest(foreign) == before
    assert not Path(f"{foreign}-wal").exists()
    with pytest.raises(UserError, match="not a labeller catalogue"):
        Catalogue.open(foreign, create=True)  # a write command does not adopt it either
    assert digest(foreign) == before


def test_read_commands_never_write_to_a_catalogue(db):
    before = digest(db)
    run_cli("models", "--db", db)
    run_cli("show", "--db", db, "--layer", "0", "--neuron", "1")
    run_cli("rank", "--db", db)
    assert digest(db) == before
    with Catalogue.open(db, read_only=True) as catalogue, pytest.raises(sqlite3.OperationalError):
        catalogue.db.execute("delete from neurons")


def test_damage_is_found_on_open_and_by_check_and_never_written_or_copied(db, tmp_path):
    assert run_cli("check", "--db", db).output.startswith("ok: ")
    damage(db)
    before = digest(db)
    for args in (
        ("show", "--layer", "0", "--neuron", "1"),
        ("rank",),
        ("export",),
        ("label", "--layer", "0", "--neuron", "1", "--text", "x", "--annotator", "a"),
    ):
        line = one_error_line(run_cli(*args, "--db", db, ok=False))
        assert "is damaged" in line, args
    assert digest(db) == before  # label wrote nothing into it
    result = run_cli("check", "--db", db, ok=False)
    assert result.exit_code == 2 and result.output.strip()  # what is wrong, on stdout
    assert "is damaged" in result.stderr
    copy = tmp_path / "backups" / "copy.db"
    assert "is damaged" in one_error_line(run_cli("backup", "--db", db, copy, ok=False))
    assert not copy.parent.exists()


def test_backup_runs_the_full_check_the_open_may_not_finish(db, tmp_path, monkeypatch):
    """On a big catalogue the quick check on open runs out of time; backup still refuses."""
    damage(db)
    monkeypatch.setattr(catalogue_module, "QUICK_CHECK_SECONDS", 0)
    copy = tmp_path / "backups" / "copy.db"
    line = one_error_line(run_cli("backup", "--db", db, copy, ok=False))
    assert "is damaged" in line and "no backup written" in line
    assert list(copy.parent.iterdir()) == []  # no partial copy, no -journal


def test_backup_is_checked_and_atomic(db, tmp_path):
    copy = tmp_path / "deep" / "copy.db"
    assert "integrity check passed" in run_cli("backup", "--db", db, copy).output
    with sqlite3.connect(copy) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy.db"]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    line = one_error_line(run_cli("backup", "--db", db, blocker / "sub" / "copy.db", ok=False))
    assert "cannot write" in line


LIMIT = 64 * 1024  # above the source's 32 KiB -shm, below the catalogue


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_backup_to_a_full_destination_leaves_nothing(db, tmp_path):
    """A file-size limit makes every write past it fail, as a full disk does."""
    assert db.stat().st_size > 2 * LIMIT
    target = tmp_path / "out" / "copy.db"
    target.parent.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "labeller", "backup", "--db", str(db), str(target)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {target}"), lines
    assert "damaged" not in lines[0]
    assert list(target.parent.iterdir()) == []  # no partial copy, no -journal


def test_a_catalogue_under_a_parent_that_cannot_exist_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create"):
        Catalogue.open(blocker / "sub" / "c.db", create=True)


def crash_mid_write(db: Path) -> None:
    """Leave `db` as a writer killed in the middle of a rollback-journal transaction leaves it
    (a scan's bulk write, which runs in that mode): uncommitted pages already in the file, the
    hot journal that undoes them beside it."""
    script = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('pragma journal_mode = delete')\n"
        "conn.execute('pragma cache_size = 2')\n"  # dirty pages spill into the file
        "conn.execute('begin immediate')\n"
        "conn.execute('delete from neuron_examples')\n"
        "conn.execute('update neurons set scan_id = scan_id')\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(db)], check=True)


def test_a_write_killed_mid_transaction_is_rolled_back_by_the_next_command(db):
    """A hot journal (a writer killed mid-write) is undone by the next command, read or write,
    which then sees the catalogue as it was before that write; the read-only probe on open
    cannot undo it, so it used to fail with 'attempt to write a readonly database'."""
    with Catalogue.open(db, read_only=True) as catalogue:
        before = catalogue.db.execute("select count(*) from neuron_examples").fetchone()[0]
    assert before > 0
    crash_mid_write(db)
    assert Path(f"{db}-journal").stat().st_size > 0
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # what the probe meets
        sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("select 1 from neurons").fetchone()
    run_cli("models", "--db", db)
    with Catalogue.open(db, read_only=True) as catalogue:
        after = catalogue.db.execute("select count(*) from neuron_examples").fetchone()[0]
        assert catalogue.db.execute("pragma integrity_check").fetchone() == ("ok",)
    assert after == before
    crash_mid_write(db)
    run_cli("show", "--db", db, "--layer", "0", "--neuron", "1")
    crash_mid_write(db)
    with Catalogue.open(db) as catalogue:  # a write command's open
        assert catalogue.db.execute("select count(*) from neuron_examples").fetchone()[0] == before


def test_an_exclusive_lock_on_open_says_locked_not_damaged(db, monkeypatch):
    monkeypatch.setattr(catalogue_module, "BUSY_TIMEOUT_MS", 200)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("pragma locking_mode = exclusive")
        holder.execute("begin exclusive")
        holder.execute("delete from label_history where 0")
        line = one_error_line(run_cli("models", "--db", db, ok=False))
    finally:
        holder.close()
    assert "locked" in line and "damaged" not in line and "backup" not in line


def sqlite_error(conn: sqlite3.Connection, sql: str, values: list[object]) -> sqlite3.Error:
    with pytest.raises(sqlite3.Error) as caught:
        conn.execute(sql, values)
    return caught.value


def test_sqlite_errors_say_what_happened(db, tmp_path):
    uri = f"{db.absolute().as_uri()}?mode=ro"
    with sqlite3.connect(uri, uri=True) as read_only:
        readonly = describe_sqlite_error(sqlite_error(read_only, "delete from neurons", []))
        read_only.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)
        many = 200
        too_many = describe_sqlite_error(
            sqlite_error(
                read_only, f"select * from neurons where id in ({','.join('?' * many)})", [0] * many
            )
        )
    read_only.close()
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("begin immediate")
    other = sqlite3.connect(db, timeout=0.1, isolation_level=None)
    locked = describe_sqlite_error(sqlite_error(other, "begin immediate", []))
    writer.close()
    other.close()
    assert "cannot be written" in readonly
    assert "too large for one query" in too_many
    assert "locked by another process" in locked
    for message in (readonly, too_many, locked):
        assert "damaged" not in message and "backup" not in message
    damage(db)
    conn = sqlite3.connect(db)
    tables = [r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")]
    errors = []
    for table in tables:
        try:
            conn.execute(f"select * from {table}").fetchall()
        except sqlite3.DatabaseError as exc:
            errors.append(describe_sqlite_error(exc))
    conn.close()
    assert errors and all("damaged" in message for message in errors)


def test_upgrading_an_older_catalogue_says_baseline_scores_are_rule_and_others_unknown(tmp_path):
    """m004: a baseline score has only ever been a rule; an older LLM score may have mixed
    expected values and written integers, so its kind stays unknown (None), not a guess."""
    from sqlite_utils import Database

    from labeller.catalogue.migrations import migrations

    path = tmp_path / "old.db"
    db = Database(path)
    migrations.apply(db, stop_before="m004_prediction_and_selection")
    model = db.table("models").insert({"name": "m", "source": "demo"}).last_pk
    neuron = db.table("neurons").insert({"model_id": model, "layer": 0, "neuron": 0}).last_pk
    explanation = (
        db.table("explanations")
        .insert(
            {
                "neuron_id": neuron,
                "text": "t",
                "source": "s",
                "status": "proposed",
                "created_at": "x",
            }
        )
        .last_pk
    )
    for simulator in ("baseline", "gpt-4o-mini"):
        db.table("scores").insert(
            {
                "explanation_id": explanation,
                "method": "top_and_random",
                "split": "valid",
                "score": 0.5,
                "simulator": simulator,
                "prompt_version": "v1",
                "created_at": "2026-01-01T00:00:00+00:00",
            }
        )
    db.close()
    with Catalogue.open(path) as catalogue:
        (stored,) = catalogue.explanations_of(neuron)
    kinds = {s.simulator: s.prediction for s in stored.scores}
    assert kinds == {"baseline": PredictionKind.RULE, "gpt-4o-mini": None}
