"""The catalogue: the only code that speaks SQL.

One SQLite file (WAL, foreign keys on), written through sqlite-utils, schema by migrations.
Everything goes in and out as records from `labeller.records`, mapped to and from rows once in
`labeller.catalogue.rows`; people's label changes go through `labeller.catalogue.labels`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labeller.catalogue import label_state, rows
from labeller.catalogue.database import Database
from labeller.catalogue.detectors import detector_scores_of
from labeller.catalogue.labels import append_history
from labeller.catalogue.migrations import KNOWN_MIGRATIONS, MIGRATION_SET, migrations
from labeller.catalogue.rows import NeuronBlock, NeuronRow, Row, WindowRow, params_key
from labeller.errors import UserError
from labeller.explain.scoring import above_chance
from labeller.output_files import replaced_atomically
from labeller.records import (
    PRIMARY_METHOD,
    Example,
    ExampleKind,
    Explanation,
    HistoryAction,
    HistoryEntry,
    LabelState,
    LabelStatus,
    ModelRecord,
    NeuronView,
    NullControl,
    PredictionKind,
    RankRow,
    RelatedNeuron,
    ScanParams,
    ScanRecord,
    ScanStatus,
    Score,
    ScoreMethod,
    ScoreWindows,
    Split,
    utc_now,
)
from labeller.sealing import EXPLAINER_SEES

DEFAULT_DB = Path("db") / "labeller.db"
BUSY_TIMEOUT_MS = 30_000
# A scan's results are written in batches of this many rows (neurons), with this much page cache.
BULK_BATCH = 20_000
BULK_NEURONS = 1_000  # neurons given as rows are packed and written this many at a time
BULK_CACHE_KIB = 256 * 1024

# Scans with their model's name, as `rows.scan_from_row` reads them.
_SCANS_SQL = "select s.*, m.name as model from scans s join models m on m.id = s.model_id"
# History entries with their neuron's layer and index, as `rows.history_from_row` reads them.
_HISTORY_SQL = """select h.*, n.layer, n.neuron from label_history h
    join neurons n on n.id = h.neuron_id join models m on m.id = n.model_id"""


def default_db_path() -> Path:
    return Path(os.environ.get("LABELLER_DB") or DEFAULT_DB)


@dataclass(frozen=True)
class NeuronRef:
    id: int
    model: str
    layer: int
    neuron: int
    scan_id: int


# The quick check on open stops after this long (it reads every page: ~3.6 s for 500 MB), so it
# covers small catalogues whole and bounds the cost of every command on big ones.
QUICK_CHECK_SECONDS = 0.15
_CORRUPT = {sqlite3.SQLITE_CORRUPT}


def checkpoint_file(catalogue: Path, scan_id: int) -> Path:
    """`CATALOGUE.scan-ID.checkpoint`, beside the catalogue file (or its backup)."""
    return catalogue.with_name(f"{catalogue.name}.scan-{scan_id}.checkpoint")


class CatalogueDamaged(UserError):
    """The file's pages or records are corrupt: only a backup brings them back."""

    def __init__(self, path: Path | str, detail: str) -> None:
        super().__init__(
            f"{path} is damaged ({detail}); restore it from a backup "
            "(`labeller check` says what is wrong)"
        )


def describe_sqlite_error(exc: sqlite3.Error) -> str:
    """What went wrong, in words: only real corruption is called damage."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in _CORRUPT:
        return f"the catalogue is damaged ({exc}); restore it from a backup"
    if primary == sqlite3.SQLITE_NOTADB:
        return f"the catalogue is not an SQLite file ({exc}); restore it from a backup"
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return (
            f"the catalogue is locked by another process ({exc}) and stayed locked for "
            f"{BUSY_TIMEOUT_MS // 1000} s; try again when it finishes"
        )
    if primary == sqlite3.SQLITE_FULL:
        return f"the disk is full ({exc}); free some space and run the command again"
    if primary == sqlite3.SQLITE_READONLY:
        return f"the catalogue cannot be written ({exc}); check the file's and folder's permissions"
    if primary == sqlite3.SQLITE_CANTOPEN:
        return f"cannot open the catalogue ({exc}); check the path and its permissions"
    if primary == sqlite3.SQLITE_IOERR:
        return f"a disk I/O error ({exc}); check the disk and run the command again"
    if "too many SQL variables" in str(exc) or primary == sqlite3.SQLITE_TOOBIG:
        return f"the request is too large for one query ({exc}); ask for fewer neurons at once"
    return f"SQLite failed ({exc})"


def _integrity_problems(conn: sqlite3.Connection, limit: int) -> list[str]:
    try:
        found = [str(r[0]) for r in conn.execute(f"PRAGMA integrity_check({int(limit)})")]
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _CORRUPT:
            return [str(exc)]
        raise
    return _problem_lines(found)


def _problem_lines(found: list[str]) -> list[str]:
    """SQLite's check rows as one problem a line ([] for "ok")."""
    if found == ["ok"]:
        return []
    lines = (line.strip() for problem in found for line in problem.splitlines())
    return [line for line in lines if line and not line.startswith("*** in database")]


def _read_only_uri(path: Path) -> str:
    """A `mode=ro` URI naming exactly `path` (`#`, `?` and `%` in it percent-escaped)."""
    return f"{path.absolute().as_uri()}?mode=ro"


@contextmanager
def _interrupted_after(conn: sqlite3.Connection, seconds: float) -> Iterator[None]:
    timer = threading.Timer(seconds, conn.interrupt)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """`PRAGMA quick_check` for at most QUICK_CHECK_SECONDS (0: none): unfinished means
    unknown, not bad."""
    if QUICK_CHECK_SECONDS <= 0:
        return
    try:
        with _interrupted_after(conn, QUICK_CHECK_SECONDS):
            problems = _problem_lines([str(r[0]) for r in conn.execute("PRAGMA quick_check(5)")])
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            return
        raise
    if problems:
        raise CatalogueDamaged(path, problems[0])


def _inspect_existing(path: Path, *, adopt_empty: bool, verify: bool = True) -> None:
    """Refuse files that are not ours, and damaged ones, through a read-only connection, before
    anything can write to them. An SQLite file holding nothing at all may become a catalogue
    (`adopt_empty`, for write commands); one with any schema object of its own never does.

    A hot journal (a writer killed inside a rollback-journal transaction, as a scan's bulk
    write is) is undone first, as SQLite undoes it for any connection that may write: a
    read-only one cannot, and cannot read the file until it is."""
    try:
        _probe(path, adopt_empty=adopt_empty, verify=verify)
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) != sqlite3.SQLITE_READONLY_ROLLBACK:
            raise
        try:
            with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)) as conn:
                conn.execute("select count(*) from sqlite_master").fetchone()  # rolls back
        except sqlite3.DatabaseError as rollback:
            raise UserError(
                f"cannot open {path}: an interrupted write left {path.name}-journal beside it, "
                f"and undoing it failed ({describe_sqlite_error(rollback)}); run any labeller "
                "command where the file and its folder are writable"
            ) from None
        _probe(path, adopt_empty=adopt_empty, verify=verify)


def _probe(path: Path, *, adopt_empty: bool, verify: bool) -> None:
    """`_inspect_existing`'s checks; a hot journal raises sqlite3.SQLITE_READONLY_ROLLBACK."""
    try:
        with closing(
            sqlite3.connect(_read_only_uri(path), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        ) as conn:
            objects = {(r[0], r[1]) for r in conn.execute("select type, name from sqlite_master")}
            tables = {name for kind, name in objects if kind == "table"}
            if migrations.migrations_table not in tables:
                if objects or conn.execute("PRAGMA user_version").fetchone()[0]:
                    raise UserError(
                        f"{path} is not a labeller catalogue; pass --db with another path"
                    )
                if adopt_empty:
                    return
                raise UserError(
                    f"{path} holds no catalogue yet; run `labeller scan` first or pass --db"
                )
            applied = {
                r[0]
                for r in conn.execute(
                    f"select name from {migrations.migrations_table} where migration_set = ?",
                    [MIGRATION_SET],
                )
            }
            if verify and applied and not applied - KNOWN_MIGRATIONS:
                _quick_check(conn, path)
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in _CORRUPT:
            raise CatalogueDamaged(path, str(exc)) from None
        if code == sqlite3.SQLITE_NOTADB:
            raise UserError(
                f"{path} is not a readable SQLite catalogue ({exc}); restore it from a backup "
                "or pass --db with another path"
            ) from None
        if getattr(exc, "sqlite_errorcode", 0) == sqlite3.SQLITE_READONLY_ROLLBACK:
            raise
        raise UserError(f"cannot read {path}: {describe_sqlite_error(exc)}") from None
    if not applied:
        raise UserError(f"{path} is not a labeller catalogue; pass --db with another path")
    newer = applied - KNOWN_MIGRATIONS
    if newer:
        raise UserError(
            f"{path} was written by a newer labeller (schema {sorted(newer)[-1]}); "
            "upgrade labeller to open it"
        )


class Catalogue:
    def __init__(self, db: Database, path: Path, *, read_only: bool = False) -> None:
        self.db = db
        self.path = path
        self.read_only = read_only

    @classmethod
    def open(
        cls,
        path: Path | str | None = None,
        *,
        create: bool = False,
        read_only: bool = False,
        verify: bool = True,
    ) -> Catalogue:
        """Open the catalogue at `path`: `read_only` for read commands (never writes, never
        migrates), else writable, and `create` (scan, import) also makes a new one.
        Write commands upgrade an older schema. `verify`: the bounded quick check first."""
        path = Path(path) if path is not None else default_db_path()
        if path.is_dir():
            raise UserError(f"{path} is a directory; pass --db with a catalogue file path")
        exists = path.exists() and path.stat().st_size > 0
        if exists:
            _inspect_existing(path, adopt_empty=create and not read_only, verify=verify)
        elif not create or read_only:
            raise UserError(
                f"no catalogue at {path}; run `labeller scan` first or pass --db / LABELLER_DB"
            )
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(
                    f"cannot create {path}: {exc.strerror or exc}; pass --db with another path"
                ) from None
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db = Database(conn)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA foreign_keys = ON")
            if read_only:
                # Not `mode=ro`: a read-write connection that refuses writes still removes the
                # WAL files on close, as any other reader does.
                db.execute("PRAGMA query_only = ON")
                if migrations.pending(db):
                    conn.close()
                    raise UserError(
                        f"{path} has an older schema; a write command (label, explain, score, "
                        "detect, import) upgrades it"
                    )
                return cls(db, path, read_only=True)
            # Safe with WAL: a crash loses nothing committed; only power loss can drop the last.
            db.execute("PRAGMA synchronous = NORMAL")
            if db.journal_mode != "wal":  # new, or a scan's bulk write could not restore it
                db.enable_wal()
            if not exists or migrations.pending(db):
                # Each migration is atomic: an interrupted upgrade leaves the previous schema.
                migrations.apply(db)
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _CORRUPT:
                raise CatalogueDamaged(path, str(exc)) from None
            raise UserError(f"cannot open {path}: {describe_sqlite_error(exc)}") from None
        return cls(db, path)

    def close(self) -> None:
        """Fold the WAL back into the main file, so a plain copy of it is complete."""
        # Another process may hold the database busy: then its own close checkpoints.
        if self.read_only:
            self.db.conn.close()
            return
        with suppress(sqlite3.OperationalError):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.conn.close()

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def insert(self, table: str, row: Row) -> int:
        """Insert one row and return its id (every table's `id` is SQLite's rowid)."""
        rowid = self.db.table(table).insert(row).last_rowid
        assert rowid is not None  # sqlite-utils sets it for every single-row insert
        return rowid

    # --- models ---------------------------------------------------------------------------

    def upsert_model(self, model: ModelRecord) -> int:
        existing = self._model_row(model.name)
        if existing:
            return int(existing["id"])
        return self.insert("models", rows.model_to_row(model))

    def _model_row(self, name: str) -> Row | None:
        found = list(self.db.table("models").rows_where("name = ?", [name]))
        return found[0] if found else None

    def models(self) -> list[ModelRecord]:
        return [
            rows.model_from_row(row) for row in self.db.table("models").rows_where(order_by="id")
        ]

    def resolve_model(self, name: str | None) -> ModelRecord:
        """The model a read command means: the named one, or the only one the catalogue holds."""
        models = self.models()
        if name is None:
            if len(models) == 1:
                return models[0]
            if not models:
                raise UserError(f"{self.path} holds no scanned model yet; run `labeller scan`")
            names = ", ".join(m.name for m in models)
            raise UserError(f"{self.path} holds several models ({names}); pass --model NAME")
        for model in models:
            if model.name == name:
                return model
        names = ", ".join(m.name for m in models) or "none"
        raise UserError(f"model {name!r} is not in {self.path} (it holds: {names})")

    # --- scans ----------------------------------------------------------------------------

    def create_scan(self, model_id: int, params: ScanParams) -> int:
        now = utc_now()
        return self.insert(
            "scans",
            rows.scan_to_row(
                model_id,
                params,
                ScanStatus.RUNNING,
                tokens_seen=0,
                windows_seen=0,
                started_at=now,
                updated_at=now,
            ),
        )

    def unfinished_scan(self, params: ScanParams) -> ScanRecord | None:
        for row in self.db.query(
            f"{_SCANS_SQL} where s.params_key = ? and s.status != ? order by s.id desc limit 1",
            [params_key(params), ScanStatus.COMPLETE.value],
        ):
            return rows.scan_from_row(row)
        return None

    def scans(self) -> list[ScanRecord]:
        return [rows.scan_from_row(row) for row in self.db.query(f"{_SCANS_SQL} order by s.id")]

    def checkpoint_path(self, scan_id: int) -> Path:
        """Where an unfinished scan's resumable state lives: a file beside the catalogue, so
        checkpoints (rewritten every minute, each as large as the scan's state) never churn
        the catalogue's pages; removed when the scan completes or is discarded."""
        return checkpoint_file(self.path, scan_id)

    def save_checkpoint(
        self, scan_id: int, state: bytes, *, tokens_seen: int, windows_seen: int, status: ScanStatus
    ) -> None:
        """The state replaces the old checkpoint file whole (never half of one), then the
        scan's progress is recorded; a resume reads its progress from the state itself."""
        try:
            with (
                replaced_atomically(self.checkpoint_path(scan_id)) as partial,
                partial.open("wb") as handle,
            ):
                handle.write(state)
                handle.flush()
                os.fsync(handle.fileno())
        except UserError as exc:
            raise UserError(f"cannot save the scan's checkpoint: {exc}") from None
        with self.write_transaction():
            # A checkpoint an older labeller kept inside the catalogue is superseded.
            self.db.execute("delete from scan_checkpoints where scan_id = ?", [scan_id])
            self._set_scan_progress(scan_id, tokens_seen, windows_seen, status)

    def load_checkpoint(self, scan_id: int) -> bytes | None:
        """The scan's resumable state: its checkpoint file, else one an older labeller kept in
        the `scan_checkpoints` table; None when there is none."""
        try:
            return self.checkpoint_path(scan_id).read_bytes()
        except FileNotFoundError:
            pass
        found = list(self.db.table("scan_checkpoints").rows_where("scan_id = ?", [scan_id]))
        return found[0]["state"] if found else None

    def _remove_checkpoint(self, scan_id: int) -> None:
        with suppress(OSError):
            self.checkpoint_path(scan_id).unlink(missing_ok=True)

    def set_scan_status(self, scan_id: int, status: ScanStatus) -> None:
        self.db.table("scans").update(scan_id, {"status": status.value, "updated_at": utc_now()})

    def _set_scan_progress(
        self, scan_id: int, tokens_seen: int, windows_seen: int, status: ScanStatus
    ) -> None:
        self.db.table("scans").update(
            scan_id,
            {
                "tokens_seen": tokens_seen,
                "windows_seen": windows_seen,
                "status": status.value,
                "updated_at": utc_now(),
            },
        )

    def discard_scan(self, scan_id: int) -> None:
        """Drop an unfinished scan that cannot be resumed; completed results are never touched."""
        with self.write_transaction():
            self.db.table("scan_checkpoints").delete_where("scan_id = ?", [scan_id])
            self.db.table("scans").delete_where(
                "id = ? and status != ?", [scan_id, ScanStatus.COMPLETE.value]
            )
        self._remove_checkpoint(scan_id)

    def write_scan_results(
        self,
        scan_id: int,
        model_id: int,
        windows: Iterable[WindowRow],
        neurons: Iterable[NeuronBlock | NeuronRow],
        *,
        tokens_seen: int,
        windows_seen: int,
        token_texts: Mapping[int, str] | None = None,
    ) -> None:
        """Replace these neurons' stats and examples with the scan's, in one transaction
        (`token_texts`: as `insert_windows` takes them).

        Explanations and label history stay attached to the neuron: a rescan refreshes the
        evidence, it never loses people's work.
        """
        windows = list(windows)
        with self._bulk_journal(), self.write_transaction(), self._bulk_cache():
            window_ids = self._window_ids(windows)
            self.write_neurons(
                model_id,
                scan_id,
                neurons,
                window_ids,
                meanwhile=lambda: self._insert_windows(
                    model_id, scan_id, windows, window_ids, token_texts
                ),
            )
            # A window belongs to the scan (or import) of the neurons that keep it: the windows of
            # a scan no neuron belongs to any more are dropped.
            self.db.execute(
                "delete from windows where scan_id != ? and scan_id not in "
                "(select distinct scan_id from neurons where scan_id is not null)",
                [scan_id],
            )
            self.db.table("scan_checkpoints").delete_where("scan_id = ?", [scan_id])
            self._set_scan_progress(scan_id, tokens_seen, windows_seen, ScanStatus.COMPLETE)
        self._remove_checkpoint(scan_id)

    @contextmanager
    def _bulk_journal(self) -> Iterator[None]:
        """A scan's results written through a rollback journal instead of the WAL when no other
        connection has the file open: a new page then reaches the file once, not once in the
        WAL and again when it is checkpointed (so a scan writes about its catalogue's size, not
        twice it). Crash-safe all the same: the journal keeps the old content of every page the
        write changes and `synchronous = FULL` syncs it before the file is touched, so an
        interrupted write leaves the catalogue as it was. With another connection open (a TUI,
        a `label`) the write goes through the WAL as every other write does. WAL again after
        (or at the next write command's open, if a reader holds the file then)."""
        if self.db.conn.in_transaction:
            yield
            return
        self.db.execute("PRAGMA busy_timeout = 0")
        try:
            mode = str(self.db.execute("PRAGMA journal_mode = DELETE").fetchone()[0])
        except sqlite3.OperationalError:  # another connection has the file open
            mode = "wal"
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if mode != "delete":
            yield
            return
        self.db.execute("PRAGMA synchronous = FULL")
        try:
            yield
        finally:
            self.db.execute("PRAGMA synchronous = NORMAL")
            with suppress(sqlite3.OperationalError):
                self.db.enable_wal()

    @contextmanager
    def _bulk_cache(self) -> Iterator[None]:
        """A larger page cache for one big write, so its pages reach the WAL about once rather
        than spilling and being written again (back to the default after)."""
        before = self.db.execute("PRAGMA cache_size").fetchone()[0]
        self.db.execute(f"PRAGMA cache_size = {-BULK_CACHE_KIB}")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA cache_size = {int(before)}")

    def insert_windows(
        self,
        model_id: int,
        scan_id: int | None,
        windows: Iterable[WindowRow],
        token_texts: Mapping[int, str] | None = None,
    ) -> dict[int, int]:
        """Insert these windows of the model's text (call inside a write transaction): their
        token ids, and their token strings only where the model's vocabulary (completed here
        with the strings it lacked) does not give them. `token_texts`: the model's string for
        every id of the windows without strings of their own (a scan's). Returns window key ->
        id."""
        windows = list(windows)
        ids = self._window_ids(windows)
        self._insert_windows(model_id, scan_id, windows, ids, token_texts)
        return ids

    def _window_ids(self, windows: list[WindowRow]) -> dict[int, int]:
        """Ids for these windows, in order after the table's highest (inside the write
        transaction, so no other writer can take them): window key -> id."""
        last = int(self.db.execute("select coalesce(max(id), 0) from windows").fetchone()[0])
        ids = {window.key: last + n for n, window in enumerate(windows, 1)}
        if len(ids) < len(windows):
            raise ValueError("two windows share a key; each needs its own")
        return ids

    def _insert_windows(
        self,
        model_id: int,
        scan_id: int | None,
        windows: list[WindowRow],
        ids: Mapping[int, int],
        token_texts: Mapping[int, str] | None,
    ) -> None:
        """`insert_windows` with the ids `_window_ids` gave them."""
        texts = token_texts or {}
        vocabulary = self._vocabulary(
            model_id, None if len(windows) > 50 else {i for w in windows for i in w.token_ids}
        )
        differing = vocabulary.learn(texts) if scan_id is not None else set()
        sql = (
            f"insert into windows (id, {', '.join(rows.WINDOW_COLUMNS)}) "
            f"values ({', '.join('?' * (len(rows.WINDOW_COLUMNS) + 1))})"
        )
        for start in range(0, len(windows), BULK_BATCH):
            self.db.conn.executemany(
                sql,
                (
                    (ids[w.key], *rows.window_values(w, scan_id, vocabulary, texts, differing))
                    for w in windows[start : start + BULK_BATCH]
                ),
            )
        self.db.conn.executemany(
            "insert into vocabulary (model_id, token_id, text) values (?, ?, ?)",
            ((model_id, token_id, text) for token_id, text in vocabulary.added.items()),
        )

    def window_tokens(self, window_ids: Iterable[int]) -> dict[int, list[str]]:
        """These windows' token strings by id (missing ids left out): a window's own, else its
        scan's model's vocabulary's."""
        ids = sorted(set(window_ids))
        found: dict[int, tuple[int | None, list[int], str | None]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for window_id, model_id, token_ids, tokens in self.db.execute(
                f"""select w.id, s.model_id, w.token_ids, w.tokens from windows w
                left join scans s on s.id = w.scan_id
                where w.id in ({", ".join("?" * len(chunk))})""",
                chunk,
            ):
                found[int(window_id)] = (model_id, rows.unpack_token_ids(token_ids), tokens)
        needed: dict[int | None, set[int]] = {}
        for model_id, token_ids, tokens in found.values():
            if tokens is None:
                needed.setdefault(model_id, set()).update(token_ids)
        vocabularies = {
            model_id: rows.Vocabulary({}) if model_id is None else self._vocabulary(model_id, ids)
            for model_id, ids in needed.items()
        }
        empty = rows.Vocabulary({})
        return {
            window_id: vocabularies.get(model_id, empty).tokens_from_db(token_ids, tokens)
            for window_id, (model_id, token_ids, tokens) in found.items()
        }

    def _vocabulary(self, model_id: int, token_ids: Iterable[int] | None) -> rows.Vocabulary:
        """The model's stored token strings: all of them, or those of `token_ids`."""
        sql = "select token_id, text from vocabulary where model_id = ?"
        values: list[Any] = [model_id]
        if token_ids is not None:
            sql += " and token_id in (select value from json_each(?))"
            values.append(json.dumps(sorted(token_ids)))
        return rows.Vocabulary({int(i): str(t) for i, t in self.db.execute(sql, values)})

    def write_neurons(
        self,
        model_id: int,
        scan_id: int | None,
        neurons: Iterable[NeuronBlock | NeuronRow],
        window_ids: Mapping[int, int],
        meanwhile: Callable[[], None] | None = None,
    ) -> list[int]:
        """Insert or replace these neurons' rows and examples (windows by `window_ids`); their
        ids, in order. Neurons are read lazily and written in batches, in one transaction: a
        neuron already stored keeps its id (so its explanations and history stay attached) and
        has its statistics updated and its examples replaced. `meanwhile` runs once, while the
        first block is encoded (a scan inserts its windows then)."""
        ids: list[int] = []
        lookup = rows.WindowIds(window_ids)
        with self.write_transaction():
            existing = {
                (int(r[0]), int(r[1])): int(r[2])
                for r in self.db.execute(
                    "select layer, neuron, id from neurons where model_id = ?", [model_id]
                )
            }
            next_id = int(self.db.execute("select coalesce(max(id), 0) from neurons").fetchone()[0])
            insert_neuron = (
                f"insert into neurons (id, {', '.join(rows.NEURON_COLUMNS)}) "
                f"values ({', '.join('?' * (len(rows.NEURON_COLUMNS) + 1))})"
            )
            update_neuron = (
                f"update neurons set {', '.join(f'{c} = ?' for c in rows.NEURON_COLUMNS)} "
                "where id = ?"
            )
            for block, blobs in _encoded(_in_blocks(neurons), lookup, meanwhile):
                new: list[tuple[Any, ...]] = []
                updated: list[tuple[Any, ...]] = []
                examples: list[tuple[int, bytes]] = []
                for key, facts, blob in zip(block.keys, block.facts, blobs, strict=True):
                    values = (model_id, *key, scan_id, *facts)
                    neuron_id = existing.get(key)
                    if neuron_id is None:
                        next_id += 1
                        neuron_id = existing[key] = next_id
                        new.append((neuron_id, *values))
                    else:
                        updated.append((*values, neuron_id))
                    ids.append(neuron_id)
                    examples.append((neuron_id, blob))
                conn = self.db.conn
                conn.executemany(update_neuron, updated)
                conn.executemany(insert_neuron, new)
                conn.executemany(
                    "insert or replace into neuron_examples (neuron_id, data) values (?, ?)",
                    examples,
                )
        return ids

    def neuron_id(self, model_id: int, layer: int, neuron: int) -> int | None:
        for row in self.db.query(
            "select id from neurons where model_id = ? and layer = ? and neuron = ?",
            [model_id, layer, neuron],
        ):
            return int(row["id"])
        return None

    # --- reading ----------------------------------------------------------------------------

    def neuron_view(self, model_name: str | None, layer: int, neuron: int) -> NeuronView:
        model = self.resolve_model(model_name)
        model_id = int(self._model_row(model.name)["id"])  # type: ignore[index]
        found = list(
            self.db.query(
                "select * from neurons where model_id = ? and layer = ? and neuron = ?",
                [model_id, layer, neuron],
            )
        )
        if not found:
            layers = [
                r["layer"]
                for r in self.db.query(
                    "select distinct layer from neurons where model_id = ? order by layer",
                    [model_id],
                )
            ]
            if layer not in layers:
                scanned = ",".join(map(str, layers)) or "none"
                raise UserError(
                    f"layer {layer} of {model.name} has not been scanned (scanned: {scanned})"
                )
            raise UserError(
                f"{model.name} layer {layer} has no neuron {neuron} (d_mlp={model.d_mlp})"
            )
        row = found[0]
        examples = list(self._examples(int(row["id"])))
        return NeuronView(
            model=model.name,
            layer=layer,
            neuron=neuron,
            scan_id=row["scan_id"],
            stats=rows.stats_from_row(row),
            weights=rows.weights_from_row(row),
            top_examples=[e for e in examples if e.kind is ExampleKind.TOP],
            random_examples=[e for e in examples if e.kind is ExampleKind.RANDOM],
            quantile_examples=[e for e in examples if e.kind is ExampleKind.QUANTILE],
            subset_examples=[e for e in examples if e.kind is ExampleKind.SUBSET_TOP],
            dla_top_examples=[e for e in examples if e.kind is ExampleKind.DLA_TOP],
            dla_bottom_examples=[e for e in examples if e.kind is ExampleKind.DLA_BOTTOM],
            related_neurons=self.with_labels(model.name, rows.related_from_row(row) or []),
            explanations=self.explanations_of(int(row["id"])),
            label=self.label_id(int(row["id"])),
            unsealed_by=self.unsealed_by(int(row["id"])),
            detectors=detector_scores_of(self, int(row["id"])),
        )

    def with_labels(self, model_name: str, related: list[RelatedNeuron]) -> list[RelatedNeuron]:
        """Related neurons with their labels' texts filled in (None where a neuron has none)."""
        if not related:
            return []
        model_id = int(self._model_row(model_name)["id"])  # type: ignore[index]
        ids = {
            (r.layer, r.neuron): found
            for r in related
            if (found := self.neuron_id(model_id, r.layer, r.neuron)) is not None
        }
        labels = self.label_ids(list(ids.values()))
        chosen = [e for e in labels.values() if e is not None]
        marks = ", ".join("?" * len(chosen))
        texts = {
            int(row["id"]): str(row["text"])
            for row in self.db.query(
                f"select id, text from explanations where id in ({marks})", chosen
            )
        }
        out = []
        for r in related:
            label = labels.get(ids.get((r.layer, r.neuron), -1))
            out.append(r.model_copy(update={"label": None if label is None else texts.get(label)}))
        return out

    def unsealed_by(self, neuron_id: int, *, before: int | None = None) -> list[str]:
        """Who unsealed the neuron's held-out windows (history entries `unseal`), first first;
        `before`: only by entries older than that history id."""
        return [
            str(r["annotator"])
            for r in self.db.query(
                """select annotator, min(id) as first from label_history
                where neuron_id = ? and action = ? and annotator is not null and id < ?
                group by annotator order by first""",
                [neuron_id, HistoryAction.UNSEAL.value, before if before is not None else 2**62],
            )
        ]

    def _examples(self, neuron_id: int) -> Iterator[Example]:
        """The neuron's examples (top, random, then band windows, by rank) with their windows."""
        for example, window in self.packed_examples(neuron_id, "tokens, document, offset, subset"):
            yield rows.example_from_packed(example, window)

    def packed_examples(
        self, neuron_id: int, window_columns: str
    ) -> list[tuple[rows.PackedExample, Row]]:
        """The neuron's stored examples, in order, each with these columns of its window
        (`token_ids` as a list of ids; `tokens` as a list of strings, from the window or the
        model's vocabulary)."""
        found = self.db.execute(
            """select n.model_id, e.data from neuron_examples e join neurons n
            on n.id = e.neuron_id where e.neuron_id = ?""",
            [neuron_id],
        ).fetchone()
        if found is None:
            return []
        model_id, data = found
        examples = sorted(rows.decode_examples(data), key=rows.example_order)
        wanted = sorted({e.window_id for e in examples})
        columns = {c.strip() for c in window_columns.split(",")}
        if "tokens" in columns:
            columns.add("token_ids")
        windows: dict[int, Row] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for row in self.db.query(
                f"select id, {', '.join(sorted(columns))} from windows "
                f"where id in ({', '.join('?' * len(chunk))})",
                chunk,
            ):
                windows[int(row["id"])] = row
        for row in windows.values():
            if "token_ids" in row:
                row["token_ids"] = rows.unpack_token_ids(row["token_ids"])
        if "tokens" in columns:
            needed = {
                i for row in windows.values() if row["tokens"] is None for i in row["token_ids"]
            }
            vocabulary = self._vocabulary(model_id, needed)
            for row in windows.values():
                row["tokens"] = vocabulary.tokens_from_db(row["token_ids"], row["tokens"])
        missing = [e.window_id for e in examples if e.window_id not in windows]
        if missing:
            raise rows.UnreadableRecord(
                f"the catalogue's neuron {neuron_id} keeps window {missing[0]}, which is not "
                "there; run `labeller check`, and restore it from a backup"
            )
        return [(e, windows[e.window_id]) for e in examples]

    # --- explanations and scores --------------------------------------------------------------

    def neuron_refs(
        self,
        model_name: str | None,
        layers: list[int] | None,
        neurons: list[int] | None,
        flags: str = "--layer/--neurons",
    ) -> list[NeuronRef]:
        """The scanned neurons a batch command works on, in (layer, neuron) order; `flags` names
        the options the user gave them with, for the message when none match."""
        model = self.resolve_model(model_name)
        clauses: list[str] = ["m.name = ?"]
        values: list[Any] = [model.name]
        if layers is not None:
            clauses.append(f"n.layer in ({','.join('?' * len(layers))})")
            values += layers
        if neurons is not None:
            clauses.append(f"n.neuron in ({','.join('?' * len(neurons))})")
            values += neurons
        found = self.db.query(
            f"""select n.id, n.layer, n.neuron, n.scan_id from neurons n
            join models m on m.id = n.model_id where {" and ".join(clauses)}
            order by n.layer, n.neuron""",
            values,
        )
        refs = [
            NeuronRef(r["id"], model.name, r["layer"], r["neuron"], r["scan_id"]) for r in found
        ]
        if not refs:
            raise UserError(f"no scanned neurons of {model.name} match {flags}")
        return refs

    def explanations_of(self, neuron_id: int) -> list[Explanation]:
        return [
            rows.explanation_from_row(
                row,
                [
                    rows.score_from_row(s)
                    for s in self.db.query(
                        "select * from scores where explanation_id = ? order by id", [row["id"]]
                    )
                ],
            )
            for row in self.db.query(
                "select * from explanations where neuron_id = ? order by id", [neuron_id]
            )
        ]

    def add_explanation(
        self,
        ref: NeuronRef,
        text: str,
        *,
        source: str,
        prompt_version: str | None,
        producer_model: str | None,
        annotator: str | None = None,
        status: LabelStatus = LabelStatus.PROPOSED,
        seen: Sequence[Split] = EXPLAINER_SEES,
    ) -> int | None:
        """Store a label and its history entry together; None if this source already said it.
        `seen`: the splits the explainer was shown (train, the only ones `explain` gives it)."""
        now = utc_now()
        with self.write_transaction():
            existing = list(
                self.db.query(
                    "select id from explanations where neuron_id = ? and source = ? and text = ?",
                    [ref.id, source, text],
                )
            )
            if existing:
                return None
            explanation = Explanation(
                text=text,
                source=source,
                status=status,
                prompt_version=prompt_version,
                producer_model=producer_model,
                annotator=annotator,
                seen=list(seen),
                created_at=now,
            )
            explanation_id = self.insert(
                "explanations", rows.explanation_to_row(explanation, ref.id, ref.scan_id, now)
            )
            after = LabelState(
                explanation_id=explanation_id, text=text, status=status, source=source
            )
            append_history(
                self,
                ref.id,
                explanation_id,
                HistoryAction.PROPOSE,
                None,
                after,
                annotator=annotator or source,
                at=now,
            )
        return explanation_id

    def record_failure(
        self,
        neuron_id: int,
        *,
        stage: str,
        producer_model: str | None,
        prompt_version: str | None,
        error: str,
        raw: str,
        explanation_id: int | None = None,
    ) -> None:
        """An LLM reply that could not be used: kept for inspection, never as a label or score."""
        self.db.table("failed_attempts").insert(
            {
                "neuron_id": neuron_id,
                "explanation_id": explanation_id,
                "stage": stage,
                "producer_model": producer_model,
                "prompt_version": prompt_version,
                "error": error,
                "raw": raw,
                "at": utc_now(),
            }
        )

    def failures(self, neuron_id: int) -> list[dict[str, Any]]:
        return list(self.db.table("failed_attempts").rows_where("neuron_id = ?", [neuron_id]))

    def has_scores(
        self,
        explanation_id: int,
        simulator: str,
        split: Split,
        version: str,
        method: ScoreMethod = PRIMARY_METHOD,
    ) -> bool:
        found = self.db.query(
            "select 1 from scores where explanation_id = ? and simulator = ? and split = ? "
            "and prompt_version = ? and method = ? limit 1",
            [explanation_id, simulator, split.value, version, method.value],
        )
        return any(True for _ in found)

    def save_scores(self, explanation_id: int, scores: list[Score]) -> None:
        """Replace this simulator's scores of the explanation on those splits, atomically."""
        with self.write_transaction():
            for score in scores:
                self.db.execute(
                    "delete from scores where explanation_id = ? and simulator = ? and split = ? "
                    "and method = ? and prompt_version = ? and subset is ?",
                    [
                        explanation_id,
                        score.simulator,
                        score.split.value,
                        score.method.value,
                        score.prompt_version,
                        score.subset,
                    ],
                )
                self.db.table("scores").insert(rows.score_to_row(score, explanation_id))

    def mark_best(
        self,
        neuron_id: int,
        source: str,
        simulator: str,
        *,
        chosen_on: Split | None = Split.CALIBRATION,
        reported_on: Split = Split.VALID,
    ) -> None:
        """Among one source's candidates, mark as best the one whose primary score by
        `simulator` on `chosen_on` is highest; it reports its score on `reported_on`. Rejected
        and withdrawn labels never compete.

        Choosing and reporting on different splits keeps best-of-K from inflating the reported
        score (the maximum of K noisy scores is biased upwards). `chosen_on` None: a lone label,
        best if it has a score on `reported_on`. Only scores of one prediction kind compete
        (the first of expected_value, integer, rule present).
        """
        on = chosen_on or reported_on
        live = ", ".join(f"'{status.value}'" for status in label_state.LIVE_STATUSES)
        where = f"""e.neuron_id = ? and e.source = ? and s.method = ? and s.split = ?
            and s.simulator = ? and s.score is not null and e.status in ({live})"""
        values = [neuron_id, source, PRIMARY_METHOD.value, on.value, simulator]
        with self.write_transaction():
            self.db.execute(
                "update explanations set best = 0, chosen_on = null, reported_on = null "
                "where neuron_id = ? and source = ?",
                [neuron_id, source],
            )
            found = {
                r["prediction"]
                for r in self.db.query(
                    "select distinct s.prediction from explanations e join scores s "
                    f"on s.explanation_id = e.id where {where}",
                    values,
                )
            }
            kind = next((k for k in PredictionKind if k.value in found), None)
            if kind is None:
                return
            self.db.execute(
                f"""update explanations set best = 1, chosen_on = ?, reported_on = ? where id = (
                    select e.id from explanations e join scores s on s.explanation_id = e.id
                    where {where} and s.prediction = ? order by s.score desc, e.id limit 1)""",
                [
                    None if chosen_on is None else chosen_on.value,
                    reported_on.value,
                    *values,
                    kind.value,
                ],
            )

    # --- null controls ------------------------------------------------------------------------

    def save_null_control(self, null: NullControl) -> None:
        model_id = int(self._model_row(null.model)["id"])  # type: ignore[index]
        self.insert("null_controls", rows.null_control_to_row(null, model_id))

    def latest_null_control(
        self,
        model_name: str,
        simulator: str | None,
        prompt_version: str | None,
        split: Split,
        prediction: PredictionKind | None,
        windows: ScoreWindows = ScoreWindows.TOP_AND_RANDOM,
    ) -> NullControl | None:
        """The newest null control a score of these is read against (one scored on the same
        kinds of windows); None when there is none (or the score's kind is unknown)."""
        if simulator is None or prediction is None:
            return None
        for row in self.db.query(
            """select c.*, m.name as model from null_controls c join models m on m.id = c.model_id
            where m.name = ? and c.simulator = ? and coalesce(c.prompt_version, '') = ?
            and c.split = ? and c.prediction = ? and c.windows = ? order by c.id desc limit 1""",
            [
                model_name,
                simulator,
                prompt_version or "",
                split.value,
                prediction.value,
                windows.value,
            ],
        ):
            return rows.null_control_from_row(row)
        return None

    def chance(
        self,
        model_name: str,
        score: Score,
        memo: dict[tuple[Any, ...], NullControl | None] | None = None,
    ) -> tuple[bool | None, float | None]:
        """Whether `score` is above chance, and the 95th percentile it was held to: the one
        place every view (show, rank, TUI) gets the verdict. `memo` spares repeated look-ups."""
        key = (score.simulator, score.prompt_version, score.split, score.prediction, score.windows)
        memo = {} if memo is None else memo
        if key not in memo:
            memo[key] = self.latest_null_control(model_name, *key)
        null = memo[key]
        p95 = None if null is None else null.p95
        return above_chance(score.score, p95), p95

    # --- label history ----------------------------------------------------------------------

    @contextmanager
    def write_transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE: take the write lock before reading what the change depends on, so
        two writers cannot both act on the same stale read. Waits up to the busy timeout.

        Every write goes through here: a deferred transaction that reads first fails at once
        with 'database is locked' (SQLITE_BUSY_SNAPSHOT) when another process wrote since, and
        the busy timeout never applies to it. Nested inside one, it is a savepoint.
        """
        if self.db.conn.in_transaction:
            with self.db.atomic():
                yield
            return
        for attempt in range(5):
            try:
                self.db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def label_scorer(self, model_name: str | None) -> label_state.Scorer:
        """Whose scores decide the model's neurons' labels and are shown beside them in the list,
        `rank` and the neuron page (`label_state.default_scorer`)."""
        model = self.resolve_model(model_name)
        return label_state.default_scorer(self.db, self._model_id(model.name))

    def label_id(self, neuron_id: int) -> int | None:
        """The neuron's label (an explanation id), by the one definition in `label_state`."""
        return label_state.label_ids(self.db, [neuron_id]).get(neuron_id)

    def label_ids(self, neuron_ids: list[int]) -> dict[int, int | None]:
        return label_state.label_ids(self.db, neuron_ids)

    def label_version(self, neuron_id: int) -> int:
        """The id of the neuron's latest history entry: what a client saw when it read."""
        row = self.db.execute(
            "select coalesce(max(id), 0) from label_history where neuron_id = ?", [neuron_id]
        ).fetchone()
        return int(row[0])

    def neuron_ref(self, model_name: str | None, layer: int, neuron: int) -> NeuronRef:
        refs = self.neuron_refs(model_name, [layer], [neuron], "--layer/--neuron")
        return refs[0]

    def history(self, ref: NeuronRef) -> list[HistoryEntry]:
        """Every change to the neuron's labels, oldest first."""
        return self._history("h.neuron_id = ?", [ref.id])

    def judgements(self, model_name: str | None) -> list[HistoryEntry]:
        """Every change people and explainers made to the model's labels, oldest first: what
        review statistics count."""
        return self._history("m.name = ?", [self.resolve_model(model_name).name])

    def _history(self, where: str, values: list[Any]) -> list[HistoryEntry]:
        return [
            rows.history_from_row(row)
            for row in self.db.query(f"{_HISTORY_SQL} where {where} order by h.id", values)
        ]

    def integrity_problems(self, limit: int = 100) -> list[str]:
        """SQLite's full `integrity_check` (every page, every index entry): [] when sound."""
        return _integrity_problems(self.db.conn, limit)

    def backup(self, destination: Path) -> list[Path]:
        """A consistent copy while others write (SQLite's online backup API), checked in full
        before it takes the name: a damaged catalogue is refused, a failed copy leaves nothing.
        An unfinished scan's checkpoint file is copied too, beside the copy under the copy's
        name (`checkpoint_file(destination, id)`), so the backup resumes it; those copies are
        returned."""
        self._backup_database(destination)
        copied = []
        for scan in self.scans():
            if scan.status is ScanStatus.COMPLETE:
                continue
            try:
                state = self.checkpoint_path(scan.id).read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise UserError(
                    f"backed up the catalogue to {destination}, but cannot read scan "
                    f"{scan.id}'s checkpoint ({exc})"
                ) from None
            target = checkpoint_file(destination, scan.id)
            with replaced_atomically(target) as partial:
                partial.write_bytes(state)
            copied.append(target)
        return copied

    def _backup_database(self, destination: Path) -> None:
        if destination.exists() or destination.is_symlink():
            raise UserError(f"{destination} exists; choose a new backup path")
        with replaced_atomically(destination) as partial:
            leftovers = [Path(f"{partial}{suffix}") for suffix in ("-journal", "-wal", "-shm")]
            try:
                with closing(sqlite3.connect(partial)) as target:
                    self.db.conn.backup(target)
                    problems = _integrity_problems(target, 1)
            except sqlite3.Error as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _CORRUPT:
                    raise CatalogueDamaged(self.path, f"{exc}; no backup written") from None
                raise UserError(
                    f"cannot write {destination}: {describe_sqlite_error(exc)}"
                ) from None
            finally:
                for leftover in leftovers:
                    leftover.unlink(missing_ok=True)
            if problems:
                raise CatalogueDamaged(self.path, f"{problems[0]}; no backup written")

    # --- ranking ----------------------------------------------------------------------------

    def rank(
        self,
        model_name: str | None,
        *,
        by: str = "score",
        split: Split = Split.VALID,
        layers: list[int] | None = None,
        status: str | None = None,
        limit: int | None = None,
        prediction: PredictionKind | None = None,
        blind: bool = False,
        simulator: str | None = None,
    ) -> list[RankRow]:
        """Neurons with their label (`label_state`: accepted, else best-scoring proposed, else
        none) and its primary score on `split`, by that score (unscored and NaN last), or by max
        activation or density; `status` keeps only neurons whose label has that status.

        A source's best-of-K candidates are represented by the one chosen on calibration
        (its valid score), never by the luckiest on valid.

        Like with like: only scores of one prediction kind count (`prediction`, else
        `rank_prediction`'s choice); scores of unknown kind (LLM scores from before kinds were
        recorded) never do. And only one simulator's (`simulator`, else `rank_simulators`'
        first: the one with the most such scores), so a label scored by two simulators is never
        ranked by whichever gave it more, nor against another label scored by the other.
        `blind`: only blind scores count (a label without one ranks as unscored)."""
        model = self.resolve_model(model_name)
        model_id = self._model_id(model.name)
        if prediction is None:
            prediction = self.rank_prediction(model.name, split, simulator)
        if simulator is None:
            simulator = next(
                (name for name, _ in self.rank_simulators(model.name, split, prediction)), None
            )
        order = {
            "score": "(s.score is null), s.score desc",
            # NaN statistics are stored as the text 'NaN' (SQLite has no NaN): they go last.
            "max": "typeof(n.max) = 'text', n.max desc",
            "density": "typeof(n.density) = 'text', n.density desc",
        }[by]
        values: list[Any] = [model.name]
        where = ["m.name = ?"]
        if layers is not None:
            where.append(f"n.layer in ({','.join('?' * len(layers))})")
            values += layers
        values += [PRIMARY_METHOD.value, split.value, prediction.value, simulator, int(blind)]
        outer = ""
        if status is not None:
            outer = "where e.status = ?"
            values.append(LabelStatus(status).value)
        sql = f"""
            with labelled as (
                select n.id, n.layer, n.neuron, n.max, n.density,
                    {label_state.label_sql(label_state.default_scorer(self.db, model_id)).id}
                    as label_id
                from neurons n join models m on m.id = n.model_id
                where {" and ".join(where)}
            )
            select n.layer, n.neuron, n.max, n.density, e.text, e.source, e.status,
                s.score, s.simulator, s.prompt_version, s.blind
            from labelled n
            left join explanations e on e.id = n.label_id
            left join scores s on s.id = (
                select s2.id from scores s2 where s2.explanation_id = e.id
                and s2.method = ? and s2.split = ? and s2.prediction = ? and s2.simulator is ?
                and (s2.blind = 1 or ? = 0)
                order by s2.score is null, s2.simulator = 'baseline', s2.created_at desc, s2.id desc
                limit 1)
            {outer}
            order by {order}, n.layer, n.neuron
            {"limit ?" if limit is not None else ""}"""
        if limit is not None:
            values.append(limit)
        memo: dict[tuple[Any, ...], NullControl | None] = {}

        def verdict(r: Row) -> bool | None:
            score = Score(
                method=PRIMARY_METHOD,
                split=split,
                score=r["score"],
                simulator=r["simulator"],
                prompt_version=r["prompt_version"],
                prediction=prediction,
            )
            return self.chance(model.name, score, memo)[0]

        return [
            RankRow(
                layer=r["layer"],
                neuron=r["neuron"],
                score=r["score"],
                above_chance=verdict(r),
                blind=None if r["score"] is None else bool(r["blind"]),
                label=r["text"],
                source=r["source"],
                status=None if r["status"] is None else LabelStatus(r["status"]),
                max=r["max"],
                density=r["density"],
            )
            for r in self.db.query(sql, values)
        ]

    def _model_id(self, model_name: str) -> int:
        row = self.db.execute("select id from models where name = ?", [model_name]).fetchone()
        if row is None:
            raise UserError(f"no model {model_name!r} in the catalogue")
        return int(row[0])

    def rank_prediction(
        self, model_name: str, split: Split, simulator: str | None = None
    ) -> PredictionKind:
        """The kind `rank` compares by default: the first of expected_value, integer, rule that
        any primary score of this model on `split` (by `simulator`, when given) has (rule when
        none is scored)."""
        return label_state.default_prediction(self.db, self._model_id(model_name), split, simulator)

    def rank_simulators(
        self, model_name: str, split: Split, prediction: PredictionKind | None
    ) -> list[tuple[str, int]]:
        """The simulators with primary scores of this kind (None: any) on `split` for the model,
        and how many each has, most first (then by name): `rank` ranks by the first unless
        told."""
        return label_state.scored_simulators(self.db, self._model_id(model_name), split, prediction)

    # --- LLM response cache -------------------------------------------------------------------

    def cached_response(self, key: str) -> str | None:
        for row in self.db.query("select response from llm_cache where key = ?", [key]):
            return str(row["response"])
        return None

    def cache_response(self, key: str, request: str, response: str) -> None:
        self.db.table("llm_cache").upsert(
            {"key": key, "request": request, "response": response, "created_at": utc_now()},
            pk="key",
        )

    def strongest_neurons(self, limit: int) -> list[tuple[str, int, int]]:
        """(model, layer, neuron) with the highest maximum activation first."""
        return [
            (row["name"], row["layer"], row["neuron"])
            for row in self.db.query(
                """select m.name, n.layer, n.neuron from neurons n
                join models m on m.id = n.model_id order by n.max desc limit ?""",
                [limit],
            )
        ]

    def neuron_counts(self) -> dict[tuple[str, int], int]:
        """Neurons stored per (model, layer), for `labeller models`."""
        return {
            (row["name"], row["layer"]): row["n"]
            for row in self.db.query(
                """select m.name, n.layer, count(*) as n from neurons n
                join models m on m.id = n.model_id group by m.name, n.layer"""
            )
        }


def _encoded(
    blocks: Iterator[NeuronBlock],
    window_ids: rows.WindowIds,
    meanwhile: Callable[[], None] | None = None,
) -> Iterator[tuple[NeuronBlock, list[bytes]]]:
    """Each block with its neurons' example blobs, in order. A block is encoded on a second
    thread while this one makes the next block (a scan's results are made as they are written)
    and inserts the one before; at most two blocks are held. On two cores the write benchmark's
    36,864 neurons went from 5.2 to 4.2 s (`benchmarks/catalogue_write.py`). `meanwhile` runs
    once the first block's encoding has started (at the end, if there is none)."""
    with ThreadPoolExecutor(1, thread_name_prefix="labeller-encode") as pool:
        waiting: tuple[NeuronBlock, Future[list[bytes]]] | None = None
        for block in blocks:
            encoding = pool.submit(rows.encode_example_columns, block.examples, window_ids)
            if meanwhile is not None:
                meanwhile()
                meanwhile = None
            if waiting is not None:
                yield waiting[0], waiting[1].result()
            waiting = (block, encoding)
        if meanwhile is not None:
            meanwhile()
        if waiting is not None:
            yield waiting[0], waiting[1].result()


def _in_blocks(neurons: Iterable[NeuronBlock | NeuronRow]) -> Iterator[NeuronBlock]:
    """The blocks as given, and consecutive rows gathered into blocks of BULK_NEURONS."""
    pending: list[NeuronRow] = []
    for item in neurons:
        if isinstance(item, NeuronRow):
            pending.append(item)
            if len(pending) < BULK_NEURONS:
                continue
        if pending:
            yield NeuronBlock.of_rows(pending)
            pending = []
        if isinstance(item, NeuronBlock):
            yield item
    if pending:
        yield NeuronBlock.of_rows(pending)
