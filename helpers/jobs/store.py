"""The jobs service's state in one SQLite file: files, jobs, their events and checkpoints.

Every call opens its own connection (the API answers from a thread pool, the worker runs in
its own thread) and writes in one transaction, so a crash leaves each row whole. Lists are
newest first and page with ``after=<id>`` as OpenAI's cursor pages do.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ACTIVE = ("validating_files", "queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
_ID = {
    "file": re.compile(r"^file-[0-9a-f]{24}$"),
    "ftjob": re.compile(r"^ftjob-[0-9a-f]{24}$"),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT, filename TEXT, bytes INTEGER, created_at INTEGER,
    purpose TEXT, examples INTEGER, sha256 TEXT);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, owner TEXT, created_at INTEGER, model TEXT, training_file TEXT,
    validation_file TEXT, hyperparameters TEXT, seed INTEGER, suffix TEXT, metadata TEXT,
    method TEXT, status TEXT, error TEXT, model_name TEXT, fine_tuned_model TEXT,
    finished_at INTEGER, trained_tokens INTEGER, pid INTEGER, cancel_requested INTEGER DEFAULT 0,
    events_offset INTEGER DEFAULT 0, last_loss REAL, last_eval_loss REAL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, job_id TEXT, created_at INTEGER,
    level TEXT, message TEXT, type TEXT, data TEXT);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, job_id TEXT, created_at INTEGER,
    step_number INTEGER, metrics TEXT, fine_tuned_model_checkpoint TEXT);
"""
_JSON_COLUMNS = ("hyperparameters", "metadata", "method", "error", "metrics", "data")


def new_id(kind: str) -> str:
    """``file-…``, ``ftjob-…``, ``ftevent-…`` or ``ftckpt-…`` with 24 hex digits."""
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def valid_id(kind: str, value: str) -> bool:
    """True when ``value`` has the exact shape of a ``kind`` id (nothing that leaves a folder)."""
    return bool(_ID[kind].match(value))


def _row(cursor: sqlite3.Cursor, values: tuple) -> dict[str, Any]:
    row = {d[0]: v for d, v in zip(cursor.description, values, strict=True)}
    for key in _JSON_COLUMNS:
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    return row


class Store:
    """SQLite tables ``files``, ``jobs``, ``events``, ``checkpoints`` (see the schema above)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = _row
        try:
            with db:  # one transaction: committed on success, rolled back on an exception
                yield db
        finally:
            db.close()

    def insert(self, table: str, *, or_ignore: bool = False, **values: Any) -> None:
        """Add one row (``or_ignore``: unless its id exists); dicts and lists are stored as JSON."""
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        data = [json.dumps(v) if isinstance(v, dict | list) else v for v in values.values()]
        verb = "INSERT OR IGNORE" if or_ignore else "INSERT"
        with self._db() as db:
            db.execute(f"{verb} INTO {table} ({cols}) VALUES ({marks})", data)

    def update_job(self, job_id: str, **values: Any) -> None:
        """Set columns of one job."""
        sets = ", ".join(f"{k} = ?" for k in values)
        data = [json.dumps(v) if isinstance(v, dict | list) else v for v in values.values()]
        with self._db() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*data, job_id])

    def transition(self, job_id: str, statuses: tuple[str, ...], **values: Any) -> bool:
        """Set columns only if the job is in one of ``statuses``; True when it was (atomic)."""
        sets = ", ".join(f"{k} = ?" for k in values)
        data = [json.dumps(v) if isinstance(v, dict | list) else v for v in values.values()]
        marks = ", ".join("?" for _ in statuses)
        sql = f"UPDATE jobs SET {sets} WHERE id = ? AND status IN ({marks})"
        with self._db() as db:
            return db.execute(sql, [*data, job_id, *statuses]).rowcount > 0

    def get(self, table: str, row_id: str) -> dict[str, Any] | None:
        """One row by id, or None."""
        with self._db() as db:
            return db.execute(f"SELECT * FROM {table} WHERE id = ?", (row_id,)).fetchone()

    def delete(self, table: str, row_id: str) -> bool:
        """Remove one row; True when it existed."""
        with self._db() as db:
            return db.execute(f"DELETE FROM {table} WHERE id = ?", (row_id,)).rowcount > 0

    def page(
        self, table: str, limit: int, after: str | None = None, **where: Any
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` rows newest first, older than row ``after``; and whether more exist."""
        clauses = [f"{k} = ?" for k in where]
        args: list[Any] = list(where.values())
        if after is not None:
            clauses.append(f"rowid < (SELECT rowid FROM {table} WHERE id = ?)")
            args.append(after)
        sql = f"SELECT * FROM {table}"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY rowid DESC LIMIT ?"
        with self._db() as db:
            rows = db.execute(sql, [*args, limit + 1]).fetchall()
        return rows[:limit], len(rows) > limit

    def jobs_with(self, *statuses: str, owner: str | None = None) -> list[dict[str, Any]]:
        """Jobs in these statuses, oldest first (the order they run in)."""
        marks = ", ".join("?" for _ in statuses)
        sql = f"SELECT * FROM jobs WHERE status IN ({marks})"
        args: list[Any] = list(statuses)
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        with self._db() as db:
            return db.execute(sql + " ORDER BY rowid", args).fetchall()

    def event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        data: dict | None = None,
        event_id: str | None = None,
    ) -> None:
        """Append an event (type "metrics" when it carries data, else "message").

        An ``event_id`` makes it idempotent: a second event with that id is ignored.
        """
        self.insert(
            "events",
            or_ignore=event_id is not None,
            id=event_id or new_id("ftevent"),
            job_id=job_id,
            created_at=int(time.time()),
            level=level,
            message=message,
            type="metrics" if data else "message",
            data=data,
        )
