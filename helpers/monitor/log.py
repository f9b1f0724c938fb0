"""The request log: every chat request the server answered, and its users' feedback, in SQLite.

    >>> from helpers.monitor.log import RequestLog
    >>> log = RequestLog("outputs/monitor/requests.db")  # PII masked; store_raw=True keeps it
    >>> server = start_server({"tuned": backend}, log=log)  # one row per chat request
    >>> log.add_feedback("chatcmpl-...", "down", correction='{"intent": "refund", ...}')
    >>> df = log.frame()  # a DataFrame, one row per request, its latest feedback joined
    >>> log.export("outputs/monitor/day1.parquet"); log.purge(before_ts=time.time() - 30 * 86400)

The database runs in WAL mode (write-ahead log): the server's threads write while a notebook
reads the same file, and a reader never waits for a writer. Rows come from :func:`request_row`,
which derives the quality and security flags (``json_valid``, ``injection``, ``pii_in_output``)
from the raw text before any masking.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

COLUMNS = (
    "id", "ts", "replay_ts", "client", "model", "version", "messages", "prompt", "output",
    "prompt_tokens", "completion_tokens", "ttft_s", "latency_s", "status", "error", "confidence",
    "json_valid", "injection", "pii_in_output", "metadata",
)  # fmt: skip
FRAME_COLUMNS = (*COLUMNS, "feedback_rating", "feedback_correction")
MAX_CORRECTION_CHARS = 2000  # a correction is one answer (a JSON object), not a document
RATINGS = {"up": 1, "down": -1, 1: 1, -1: -1}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, replay_ts REAL, client TEXT, model TEXT,
    version TEXT, messages TEXT NOT NULL, prompt TEXT NOT NULL, output TEXT NOT NULL,
    prompt_tokens INTEGER, completion_tokens INTEGER, ttft_s REAL, latency_s REAL,
    status INTEGER NOT NULL, error TEXT, confidence REAL, json_valid INTEGER,
    injection INTEGER NOT NULL, pii_in_output INTEGER NOT NULL, metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    ts REAL NOT NULL, rating INTEGER NOT NULL CHECK (rating IN (-1, 1)), correction TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
"""


class FeedbackError(ValueError):
    """Feedback that was refused; ``status`` and ``code`` are the HTTP answer the server gives."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def _replay_ts(metadata: Mapping[str, str]) -> float | None:
    try:
        value = float(metadata["replay_ts"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def request_row(
    *,
    id: str,
    ts: float,
    status: int,
    messages: Sequence[Mapping[str, str]] = (),
    output: str = "",
    model: str | None = None,
    version: str | None = None,
    client: str | None = None,
    metadata: Mapping[str, str] | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    ttft_s: float | None = None,
    latency_s: float | None = None,
    error: str | None = None,
    confidence: float | None = None,
) -> dict[str, Any]:
    """One request as a log row (raw text), with the derived columns of the course's contract."""
    from helpers.data.cleaning import find_pii
    from helpers.data.course import parse_answer
    from helpers.monitor.security import is_injection

    messages = [dict(m) for m in messages]
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    metadata = dict(metadata or {})
    return {
        "id": id,
        "ts": ts,
        "replay_ts": _replay_ts(metadata),
        "client": client,
        "model": model,
        "version": version,
        "messages": messages,
        "prompt": prompt,
        "output": output,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "ttft_s": ttft_s,
        "latency_s": latency_s,
        "status": status,
        "error": error,
        "confidence": confidence,
        "json_valid": parse_answer(output) is not None if status == 200 else None,
        "injection": is_injection(prompt),
        "pii_in_output": bool(find_pii(output)),
        "metadata": metadata,
    }


class RequestLog:
    """Requests and feedback in one SQLite file; safe to share between threads and processes.

    Text (messages, prompt, output, corrections) is stored with phone numbers, e-mail addresses
    and ID-card numbers masked (``helpers.data.cleaning.mask_pii``) unless ``store_raw=True``:
    a log is copied, exported and mined into training data, and every copy of a customer's
    phone number is one more place it can leak from (and one more row to find when that
    customer asks to be deleted). Keep raw text only where you are allowed to and need it.
    """

    def __init__(self, path: str | Path, *, store_raw: bool = False):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.store_raw = store_raw
        # One connection per object, shared by its threads under a lock; other objects and
        # processes have their own, and WAL lets them read while this one writes.
        self._db = sqlite3.connect(
            self.path, timeout=30, check_same_thread=False, isolation_level=None
        )
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL keeps this safe against crashes
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking SQLite's write lock at once (no upgrade deadlocks)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _mask(self, text: str | None) -> str | None:
        from helpers.data.cleaning import mask_pii

        return text if self.store_raw or text is None else mask_pii(text)[0]

    def _values(self, row: Mapping[str, Any]) -> tuple:
        masked = {
            **row,
            "messages": json.dumps(
                [{**m, "content": self._mask(m["content"])} for m in row["messages"]],
                ensure_ascii=False,
            ),
            "prompt": self._mask(row["prompt"]),
            "output": self._mask(row["output"]),
            "error": self._mask(row["error"]),
            "metadata": json.dumps(row["metadata"], ensure_ascii=False),
        }
        return tuple(masked[c] for c in COLUMNS)

    def add_requests(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store rows made by :func:`request_row` in one transaction; returns how many."""
        values = [self._values(row) for row in rows]  # masking happens outside the lock
        sql = (
            f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        )
        with self._write():
            self._db.executemany(sql, values)
        return len(values)

    def add_feedback(
        self, request_id: str, rating: str | int, correction: str | None = None
    ) -> int:
        """Store a thumbs up (``"up"`` or 1) or down (``"down"`` or -1); returns +1 or -1.

        Raises :class:`FeedbackError` (and writes nothing) for an unknown ``request_id`` (404),
        another rating (400), or a correction over ``MAX_CORRECTION_CHARS`` characters (413).
        """
        if isinstance(rating, bool) or rating not in RATINGS:
            raise FeedbackError(
                400, "invalid_rating", f'rating must be "up" or "down" (or 1 / -1), got {rating!r}.'
            )
        if correction is not None and not isinstance(correction, str):
            raise FeedbackError(400, "invalid_correction", "correction must be a string or null.")
        if correction is not None and len(correction) > MAX_CORRECTION_CHARS:
            raise FeedbackError(
                413,
                "correction_too_long",
                f"The correction has {len(correction)} characters; the limit is "
                f"{MAX_CORRECTION_CHARS}: send the corrected answer only.",
            )
        value = RATINGS[rating]
        correction = self._mask(correction.strip() or None) if correction else None
        with self._write():
            known = self._db.execute("SELECT 1 FROM requests WHERE id = ?", (request_id,))
            if known.fetchone() is None:
                raise FeedbackError(
                    404,
                    "request_not_found",
                    f"No request with id {str(request_id)[:80]!r} in the log: send the id of a "
                    "chat completion this server answered (the response's id, or its "
                    "x-request-id header).",
                )
            self._db.execute(
                "INSERT INTO feedback (request_id, ts, rating, correction) VALUES (?, ?, ?, ?)",
                (request_id, time.time(), value, correction),
            )
        return value

    def frame(self, since: float | None = None, until: float | None = None):
        """Requests with ``since <= ts < until`` as a DataFrame, oldest first, latest feedback."""
        import pandas as pd

        sql = (
            "SELECT r.*, f.rating AS feedback_rating, f.correction AS feedback_correction "
            "FROM requests r LEFT JOIN feedback f ON f.seq = "
            "(SELECT MAX(seq) FROM feedback WHERE request_id = r.id) "
            "WHERE r.ts >= ? AND r.ts < ? ORDER BY r.ts, r.rowid"
        )
        bounds = (-math.inf if since is None else since, math.inf if until is None else until)
        with self._lock:
            df = pd.read_sql_query(sql, self._db, params=bounds)
        df = df.reindex(columns=FRAME_COLUMNS)
        for name in ("messages", "metadata"):
            df[name] = [json.loads(text) for text in df[name]]
        for name in ("client", "model", "version", "error", "feedback_correction"):
            df[name] = df[name].astype(object).where(df[name].notna(), None)
        for name in ("replay_ts", "ttft_s", "latency_s", "confidence"):
            df[name] = df[name].astype(float)
        for name in ("injection", "pii_in_output"):
            df[name] = df[name].astype(bool)
        df["json_valid"] = df["json_valid"].astype("boolean")
        df["feedback_rating"] = df["feedback_rating"].astype("Int64")
        return df

    def export(
        self, path: str | Path, since: float | None = None, until: float | None = None
    ) -> Path:
        """Write :meth:`frame` to ``.jsonl`` or ``.parquet`` (metadata as JSON text there)."""
        path = Path(path).expanduser()
        df = self.frame(since, until)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jsonl":
            df.to_json(path, orient="records", lines=True, force_ascii=False)
        elif path.suffix == ".parquet":
            # an empty metadata dict has no struct fields for parquet: keep it as JSON text
            df["metadata"] = [json.dumps(m, ensure_ascii=False) for m in df["metadata"]]
            df.to_parquet(path, index=False)
        else:
            raise ValueError(f"export to .jsonl or .parquet, not {path.name!r}")
        return path

    def purge(self, before_ts: float) -> int:
        """Delete requests (and their feedback) older than ``before_ts``; returns how many."""
        with self._write():
            return self._db.execute("DELETE FROM requests WHERE ts < ?", (before_ts,)).rowcount

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def close(self) -> None:
        """Close this object's connection (the file and its rows stay)."""
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"RequestLog({str(self.path)!r}, store_raw={self.store_raw})"
