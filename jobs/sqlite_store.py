"""The embedded server's job store: SQLite (standard library, WAL) in one file beside the
artifacts, so a restarted server keeps its jobs, their progress, the per-owner lists of
GET /jobs, idempotency and reuse keys, and the counters of /metrics.

Tables: ``jobs`` (one JSON record per job, with its status and expiry as columns, so that the
running and unfinished jobs are a query, not a second index that could disagree), ``kv``
(progress, cancel flags, idempotency and reuse keys), ``listed`` (the owner and undispatched
lists), ``counters`` (never expire, like Redis's hashes). Records and keys expire ``ttl_s``
after their last write, as in Redis: an expired row is invisible at once and deleted by
:meth:`SqliteJobStore.purge` (the embedded dispatcher's sweep).

One connection per store object, guarded by a lock (the API's threads and the in-process
worker share it); read-modify-write runs in a ``BEGIN IMMEDIATE`` transaction, which takes the
file's write lock first, so :meth:`SqliteJobStore._update` is atomic across threads and across
store objects (or processes) on the same file, like Redis's WATCH/MULTI. WAL with
``synchronous=NORMAL`` keeps every committed transaction when the process is killed (an
operating-system crash may lose the last ones).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from jobs.records import JobRecord
from jobs.store import JobStore, progress_json

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0  # how long a write waits for another connection's write to end
UPSERT_KV = ("INSERT INTO kv VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
             "value = excluded.value, expires = excluded.expires")  # fmt: skip
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS listed (
    list TEXT NOT NULL, job_id TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (list, job_id));
CREATE INDEX IF NOT EXISTS listed_newest ON listed (list, created, job_id);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT NOT NULL, field TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (key, field));
"""


class JobDatabaseError(RuntimeError):
    """The job database cannot be used (damaged, not SQLite, or of another schema); the
    message names the file and what to do."""


class SqliteJobStore(JobStore):
    """Job records in the SQLite database ``path`` (created with its folder if missing)."""

    transient_errors = (sqlite3.OperationalError,)  # "database is locked" past the busy timeout

    def __init__(self, path: str | Path, ttl_s: int):
        super().__init__(ttl_s)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Autocommit (isolation_level=None): transactions are the explicit BEGIN IMMEDIATE ones.
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)  # fmt: skip
        try:
            self._open()
        except sqlite3.DatabaseError as error:
            self._db.close()
            what = ("cannot be opened" if isinstance(error, sqlite3.OperationalError)
                    else "is damaged or not an SQLite database")  # fmt: skip
            raise JobDatabaseError(
                f"the job database {self.path} {what} ({error}); move it (and any "
                f"{self.path.name}-wal and -shm beside it) away to start with an empty job "
                "list, or restore it from a backup"
            ) from None
        except JobDatabaseError:
            self._db.close()
            raise

    def _open(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise JobDatabaseError(
                    f"the job database {self.path} has schema {version}, this server reads "
                    f"schema {SCHEMA_VERSION}; start the server version that wrote it, or move "
                    "the file away to start with an empty job list"
                )
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: holds the file's write lock from its first statement."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, *params: object) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- records -----------------------------------------------------------------------------
    def _write_record(self, db: sqlite3.Connection, record: JobRecord) -> None:
        db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?)",
                   (record.id, record.status, record.created_at, time.time() + self.ttl_s,
                    record.model_dump_json()))  # fmt: skip

    def _update(
        self, job_id: str, change: Callable[[JobRecord], JobRecord | None]
    ) -> JobRecord | None:
        with self._transaction() as db:
            row = db.execute("SELECT record FROM jobs WHERE id = ? AND expires > ?",
                             (job_id, time.time())).fetchone()  # fmt: skip
            if row is None:
                return None
            record = JobRecord.model_validate_json(row[0])
            changed = change(record.model_copy(deep=True))
            if changed is None:
                return record
            self._write_record(db, changed)
        self._changed(job_id)  # watchers of this process (one embedded server per directory)
        return changed

    def _put(self, record: JobRecord) -> None:
        with self._transaction() as db:
            self._write_record(db, record)

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._query("SELECT record FROM jobs WHERE id = ? AND expires > ?", job_id,
                           time.time())  # fmt: skip
        return JobRecord.model_validate_json(rows[0][0]) if rows else None

    def _mark_running(self, job_id: str, running: bool) -> None:
        """Nothing to keep: :meth:`running` reads the records' status column."""

    def running(self) -> list[str]:
        rows = self._query("SELECT id FROM jobs WHERE status = 'running' AND expires > ? "
                           "ORDER BY id", time.time())  # fmt: skip
        return [job_id for (job_id,) in rows]

    def queued(self) -> list[str]:
        """Ids of the queued jobs, oldest first (what a starting embedded server runs,
        :meth:`service.dispatch.EmbeddedDispatcher.recover`)."""
        rows = self._query("SELECT id FROM jobs WHERE status = 'queued' AND expires > ? "
                           "ORDER BY created, id", time.time())  # fmt: skip
        return [job_id for (job_id,) in rows]

    def unfinished(self) -> list[str]:
        """Ids of the queued and running jobs, oldest first."""
        rows = self._query("SELECT id FROM jobs WHERE status IN ('queued', 'running') AND "
                           "expires > ? ORDER BY created, id", time.time())  # fmt: skip
        return [job_id for (job_id,) in rows]

    # --- keys and counters -------------------------------------------------------------------
    def _set(self, key: str, value: str, only_if_new: bool = False) -> bool:
        now = time.time()
        sql = UPSERT_KV
        params: tuple = (key, value, now + self.ttl_s)
        if only_if_new:  # a live key stays; an expired one counts as absent
            sql, params = sql + " WHERE kv.expires <= ?", (*params, now)
        with self._transaction() as db:
            return db.execute(sql, params).rowcount == 1

    def _get(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM kv WHERE key = ? AND expires > ?", key, time.time())
        return rows[0][0] if rows else None

    def report(self, job_id: str, progress: dict | None) -> bool:
        """Progress written and the cancel flag read in one transaction."""
        now = time.time()
        with self._transaction() as db:
            if progress is not None:
                db.execute(UPSERT_KV, (f"progress:{job_id}", progress_json(progress),
                                       now + self.ttl_s))  # fmt: skip
            cancelled = db.execute("SELECT 1 FROM kv WHERE key = ? AND expires > ?",
                                   (f"cancel:{job_id}", now)).fetchone()  # fmt: skip
        if progress is not None:
            self._changed(job_id)
        return cancelled is not None

    def _count_finish(self, job_id: str, status: str, duration_s: float | None) -> None:
        """The counters of a finished job in one transaction (its status column is the
        running index)."""
        changes = [("stats", status, 1.0)]
        if duration_s is not None:
            changes += [("durations", f, v) for f, v in self._duration_changes(duration_s).items()]
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (key, field) DO UPDATE SET "
                "value = value + excluded.value",
                changes,
            )

    def _incr(self, key: str, field: str, amount: float = 1) -> None:
        self._incr_many(key, {field: amount})

    def _incr_many(self, key: str, changes: dict[str, float]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (key, field) DO UPDATE SET "
                "value = value + excluded.value",
                [(key, field, amount) for field, amount in changes.items()],
            )

    def _counters(self, key: str) -> dict[str, float]:
        return dict(self._query("SELECT field, value FROM counters WHERE key = ?", key))

    # --- lists of jobs -----------------------------------------------------------------------
    def _index(self, owner: str, job_id: str, created_at: float) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO listed VALUES (?, ?, ?)", (owner, job_id,
                       created_at))  # fmt: skip
            db.execute("DELETE FROM listed WHERE list = ? AND rowid NOT IN (SELECT rowid FROM "
                       "listed WHERE list = ? ORDER BY created DESC, job_id DESC LIMIT ?)",
                       (owner, owner, self.max_indexed))  # fmt: skip

    def _indexed(self, owner: str, limit: int) -> list[str]:
        rows = self._query("SELECT job_id FROM listed WHERE list = ? ORDER BY created DESC, "
                           "job_id DESC LIMIT ?", owner, limit)  # fmt: skip
        return [job_id for (job_id,) in rows]

    def _unindex(self, owner: str, job_ids: list[str]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM listed WHERE list = ? AND job_id = ?",
                           [(owner, job_id) for job_id in job_ids])  # fmt: skip

    # --- upkeep ------------------------------------------------------------------------------
    def purge(self) -> int:
        """Delete expired records and keys, and the list entries of records that are gone;
        returns how many records and keys went."""
        now = time.time()
        with self._transaction() as db:
            removed = db.execute("DELETE FROM jobs WHERE expires <= ?", (now,)).rowcount
            removed += db.execute("DELETE FROM kv WHERE expires <= ?", (now,)).rowcount
            # Lists of jobs lose their expired jobs; the other lists (store.list_add) are
            # pruned by their readers, who know what their ids name.
            db.execute("DELETE FROM listed WHERE list NOT LIKE 'list:%' AND job_id NOT IN "
                       "(SELECT id FROM jobs)")  # fmt: skip
        return removed

    def __len__(self) -> int:
        """Records and keys stored, the expired ones not yet purged included."""
        rows = self._query("SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM kv)")
        return rows[0][0]

    def ping(self) -> bool:
        try:
            return self._query("SELECT 1") == [(1,)]
        except sqlite3.Error:
            return False
