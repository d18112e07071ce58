"""The checkpoint: the last published state of every link, the walk in progress, the outbox.

One SQLite file in WAL mode. Everything that must agree is written in one SQLite
transaction: the snapshot rows a batch of pages changed, the events those changes
became (the *outbox*), the walk's cursor and the set of links it has seen. The outbox
is emptied only once Kafka holds its events (see ``docs/guarantees.md``).

The walk's *seen* set is a bitmap over the snapshot's row ids: one bit per link, so a
walk of a million links holds 128 KiB, not the library.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from feed.errors import StateError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS links (
    rid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    album_id TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS walk (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    walk_id INTEGER NOT NULL,
    started_at REAL NOT NULL,
    resume TEXT NOT NULL,
    pages INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    seen BLOB NOT NULL,
    base_rid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    event_id TEXT NOT NULL,
    headers BLOB NOT NULL
);
"""

_SELECT_LINKS = "SELECT rid, id, album_id, asset_id, created_at, updated_at FROM links"

# (rid, id, album_id, asset_id, created_at, updated_at)
SnapshotRow = tuple[int, str, str, str, str, str]


class SeenSet:
    """Which snapshot rows the walk in progress has seen, one bit per row id."""

    def __init__(self, data: bytes | None = None) -> None:
        self._bits = bytearray(zlib.decompress(data)) if data else bytearray()

    def add(self, rid: int) -> None:
        byte = rid >> 3
        if byte >= len(self._bits):
            self._bits.extend(b"\0" * (byte - len(self._bits) + 4096))
        self._bits[byte] |= 1 << (rid & 7)

    def __contains__(self, rid: int) -> bool:
        byte = rid >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (rid & 7)))

    def count_upto(self, rid: int) -> int:
        """How many row ids from 0 to ``rid`` are in the set."""
        head = int.from_bytes(self._bits[: (rid >> 3) + 1], "little")
        return (head & ((1 << (rid + 1)) - 1)).bit_count()

    def dump(self) -> bytes:
        return zlib.compress(bytes(self._bits), 1)


@dataclass
class WalkState:
    """The walk in progress, as checkpointed."""

    walk_id: int
    started_at: float
    # Where the walk goes on: the last ids of the last page applied (a sequential walk),
    # or a ShardState dump (a walk by album).
    resume: list[str] | dict[str, Any] = field(default_factory=list)
    pages: int = 0
    rows: int = 0
    seen: SeenSet = field(default_factory=SeenSet)
    # Rows above this id were added by this walk: seen by definition, no bit needed.
    base_rid: int = 0
    resumed: bool = False

    def position(self) -> str:
        """Where the walk stands, for people: the cursor, or the albums done."""
        if isinstance(self.resume, dict):
            albums = self.resume.get("albums", [])
            return f"{len(self.resume.get('done', []))} of {len(albums)} albums done"
        return f"after {self.resume[-1]!r}" if self.resume else "at the first page"


@dataclass(frozen=True)
class OutboxRecord:
    """One Kafka record, decided and checkpointed; ``kind`` is the event type,
    ``watermark`` or ``dead_letter``."""

    seq: int
    kind: str
    topic: str
    key: bytes | None
    value: bytes
    event_id: str
    headers: bytes


class SnapshotStore:
    """The SQLite checkpoint of one library."""

    def __init__(self, path: Path, library: str, *, exclusive: bool = False) -> None:
        self.path = path
        self.library = library
        self._lock = _lock(path) if exclusive else None
        self._in_tx = False
        try:
            self._db = _connect(path)
        except BaseException:
            self._release()
            raise
        try:
            self._migrate()
            self._identity = _identity(path)
        except BaseException:
            self._db.close()
            self._release()
            raise

    def close(self) -> None:
        self.rollback()
        self._db.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    # -- transactions ------------------------------------------------------------------

    def begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def commit(self) -> None:
        if self._in_tx:
            self._check_in_place()
            try:
                self._db.execute("COMMIT")
            finally:
                # A failed COMMIT (a full disk) may have rolled the transaction back.
                self._in_tx = self._db.in_transaction

    def rollback(self) -> None:
        if self._in_tx:
            self._in_tx = False
            # SQLite may already have rolled back on its own (SQLITE_FULL, SQLITE_IOERR):
            # a second ROLLBACK would raise and hide the error that caused it.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def _check_in_place(self) -> None:
        """The file written to must still be the one at ``path``: a checkpoint committed
        into a deleted or replaced file is lost, and the next start, finding no state,
        would publish every link again."""
        if _identity(self.path) != self._identity:
            self.rollback()
            raise StateError(
                f"the state file {self.path} was deleted or replaced while feed ran; "
                "stopping rather than checkpointing into a file no restart will read. "
                "Put the file back (or restore a backup) before starting again: starting "
                "from an empty state re-publishes every link."
            )

    # -- the snapshot ------------------------------------------------------------------

    def get_many(self, ids: Sequence[str]) -> dict[str, SnapshotRow]:
        """The snapshot rows of these ids (those it holds)."""
        if not ids:
            return {}
        wanted = set(ids)
        # Pages usually come in id order, so one range scan of the index reads the page's
        # rows in a single pass; a page out of order falls back to point lookups.
        limit = 2 * len(wanted) + 8
        rows = self._db.execute(
            _SELECT_LINKS + " WHERE id BETWEEN ? AND ? LIMIT ?", (min(wanted), max(wanted), limit)
        ).fetchall()
        if len(rows) < limit:
            return {row[1]: row for row in rows if row[1] in wanted}
        found: dict[str, SnapshotRow] = {}
        chunked = list(wanted)
        for start in range(0, len(chunked), 500):
            chunk = chunked[start : start + 500]
            # Only "?" placeholders are interpolated; the ids travel as parameters.
            sql = _SELECT_LINKS + f" WHERE id IN ({','.join('?' * len(chunk))})"
            for row in self._db.execute(sql, chunk):
                found[row[1]] = row
        return found

    def insert_links(self, rows: Iterable[tuple[str, str, str, str, str]]) -> None:
        self._db.executemany(
            "INSERT INTO links (id, album_id, asset_id, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            rows,
        )

    def update_links(self, rows: Iterable[tuple[str, str, str, str, str]]) -> None:
        self._db.executemany(
            "UPDATE links SET album_id = ?2, asset_id = ?3, created_at = ?4, updated_at = ?5"
            " WHERE id = ?1",
            rows,
        )

    def delete_links(self, ids: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM links WHERE id = ?", ((i,) for i in ids))

    def count_links(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM links").fetchone()[0])

    def iter_links(self, batch: int = 1000) -> Iterator[list[SnapshotRow]]:
        """Every link, in row-id order, a batch at a time (bounded memory)."""
        last = -1
        while True:
            rows = self._db.execute(
                "SELECT rid, id, album_id, asset_id, created_at, updated_at FROM links"
                " WHERE rid > ? ORDER BY rid LIMIT ?",
                (last, batch),
            ).fetchall()
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def unseen(self, walk: WalkState, batch: int = 1000) -> Iterator[list[SnapshotRow]]:
        """The links that were in the snapshot when the walk began and that it did not see."""
        known = self._db.execute(
            "SELECT count(*) FROM links WHERE rid <= ?", (walk.base_rid,)
        ).fetchone()[0]
        if walk.seen.count_upto(walk.base_rid) >= known:
            return  # the common case: every link was seen, no need to scan for the others
        pending: list[SnapshotRow] = []
        for rows in self.iter_links(batch=5000):
            pending.extend(r for r in rows if r[0] <= walk.base_rid and r[0] not in walk.seen)
            while len(pending) >= batch:
                yield pending[:batch]
                pending = pending[batch:]
        if pending:
            yield pending

    # -- the walk ----------------------------------------------------------------------

    def load_walk(self) -> WalkState | None:
        row = self._db.execute(
            "SELECT walk_id, started_at, resume, pages, rows, seen, base_rid FROM walk"
        ).fetchone()
        if row is None:
            return None
        return WalkState(
            walk_id=row[0],
            started_at=row[1],
            resume=orjson.loads(row[2]),
            pages=row[3],
            rows=row[4],
            seen=SeenSet(row[5]),
            base_rid=row[6],
            resumed=True,
        )

    def new_walk(self) -> WalkState:
        walk_id = int(self.get_meta("walk_counter", 0)) + 1
        self.set_meta("walk_counter", walk_id)
        top = self._db.execute("SELECT max(rid) FROM links").fetchone()[0]
        return WalkState(walk_id=walk_id, started_at=time.time(), base_rid=int(top or 0))

    def save_walk(self, walk: WalkState) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO walk (singleton, walk_id, started_at, resume, pages, rows,"
            " seen, base_rid) VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
            (
                walk.walk_id,
                walk.started_at,
                orjson.dumps(walk.resume).decode(),
                walk.pages,
                walk.rows,
                walk.seen.dump(),
                walk.base_rid,
            ),
        )

    def end_walk(self) -> None:
        self._db.execute("DELETE FROM walk")

    # -- the outbox --------------------------------------------------------------------

    def next_seq(self) -> int:
        row = self._db.execute("SELECT max(seq) FROM outbox").fetchone()
        published = int(self.get_meta("published_seq", 0))
        return max(int(row[0] or 0), published) + 1

    def add_outbox(self, records: Iterable[OutboxRecord]) -> None:
        self._db.executemany(
            "INSERT INTO outbox (seq, kind, topic, key, value, event_id, headers)"
            " VALUES (?,?,?,?,?,?,?)",
            ((r.seq, r.kind, r.topic, r.key, r.value, r.event_id, r.headers) for r in records),
        )

    def outbox(self, after: int = 0, limit: int = 10_000) -> list[OutboxRecord]:
        rows = self._db.execute(
            "SELECT seq, kind, topic, key, value, event_id, headers FROM outbox WHERE seq > ?"
            " ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [OutboxRecord(*row) for row in rows]

    def outbox_size(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def mark_published(self, seq: int) -> None:
        """Kafka holds every record up to ``seq``: drop them from the outbox."""
        own_tx = not self._in_tx
        if own_tx:
            self.begin()
        self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))
        if seq > int(self.get_meta("published_seq", 0)):
            self.set_meta("published_seq", seq)
        if own_tx:
            self.commit()

    # -- meta --------------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            (key, orjson.dumps(value).decode()),
        )

    # -- opening -----------------------------------------------------------------------

    def _migrate(self) -> None:
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"the state file {self.path} has schema version {version}, newer than "
                    f"this release understands ({SCHEMA_VERSION}); run the newer release "
                    "or point FEED_STATE__PATH elsewhere"
                )
            if version < SCHEMA_VERSION:
                self._db.executescript(_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
            self._check_library()
        except sqlite3.DatabaseError as exc:
            raise StateError(_unreadable(self.path, exc)) from None

    @property
    def state_id(self) -> str:
        """A random id given to this state file when it was created."""
        return str(self.get_meta("state_id"))

    def _check_library(self) -> None:
        if self.get_meta("state_id") is None:
            self.set_meta("state_id", uuid.uuid4().hex)
        owner = self.get_meta("library")
        if owner is None:
            self.set_meta("library", self.library)
        elif owner != self.library:
            raise StateError(
                f"the state file {self.path} belongs to library {owner!r}, not "
                f"{self.library!r}; use one state file per library (FEED_STATE__PATH)"
            )


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _lock(path: Path) -> Any:
    """Hold ``<state>.lock`` for as long as this process writes the state file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(f"{path}.lock", "a+")  # noqa: SIM115 - held open while the store lives
    except OSError as exc:
        raise StateError(f"cannot create the lock file {path}.lock: {exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StateError(
            f"another feed process is using the state file {path} (feed run, once or "
            "snapshot): stop it first, or give this one its own FEED_STATE__PATH"
        ) from None
    return handle


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before the events it holds go to Kafka, even
        # across a power loss; the cost is one fsync per checkpoint, not per page.
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("PRAGMA cache_size = -16000")
        # The WAL is cut back to this size after each checkpoint instead of keeping the
        # size of the largest transaction it ever held.
        db.execute("PRAGMA journal_size_limit = 16777216")
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StateError(_unreadable(path, exc)) from None
    except OSError as exc:
        raise StateError(f"cannot open the state file {path}: {exc}") from None
    return db


# Primary SQLite result codes that mean the file's content is damaged.
_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def _unreadable(path: Path, exc: Exception) -> str:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) not in _DAMAGED:
        # Permissions, a read-only mount, a locked or missing directory: the file may be
        # fine, and moving it aside would re-publish every link for nothing.
        return (
            f"cannot open the state file {path} ({exc}). Check that the file and its "
            f"directory are writable by feed (SQLite also creates {path.name}-wal and "
            f"{path.name}-shm beside it) and that the disk is mounted read-write; do not "
            "move the file aside for this."
        )
    return (
        f"the state file {path} cannot be read ({exc}). feed will not guess: starting "
        "from an empty state would re-publish every link. Restore it from a backup, or "
        "move it aside to start over deliberately (consumers will see every link again)."
    )
