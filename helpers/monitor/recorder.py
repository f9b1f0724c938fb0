"""What the server does with each finished request: a log row and metric updates, off its loop.

The server calls :meth:`Recorder.begin` when a chat request arrives, marks the first token, and
:meth:`Recorder.finish` once with the outcome. ``finish`` only puts the request on a queue; a
writer thread derives the flags (JSON validity, injection, PII), updates the metrics and writes
the rows in batches, so neither the regexes nor SQLite ever hold up the event loop.

    >>> from helpers.monitor.recorder import Recorder
    >>> recorder = Recorder(RequestLog("requests.db"), ServerMetrics())  # create_app does this
    >>> recorder.flush(); recorder.close()

Nothing is lost between the response and its row: feedback for a request whose row is still
queued waits for it (:meth:`feedback`), and :meth:`close` writes what is queued before it ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from helpers.monitor.log import FeedbackError, RequestLog, request_row
from helpers.monitor.metrics import ServerMetrics

logger = logging.getLogger(__name__)
_BATCH = 256  # rows per transaction at most


@dataclass(slots=True, eq=False)
class Exchange:
    """One chat request as the server saw it; the server fills it in as it goes."""

    id: str
    ts: float  # wall clock at arrival
    started: float  # perf_counter at arrival
    model: str | None = None
    served: bool = False  # the model is one this server serves (a metrics label, then)
    version: str | None = None
    client: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)  # the answer's text, as streamed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    confidence: float | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    status: int = 0
    error: str | None = None
    finished: bool = False

    def first_token(self) -> None:
        """Call at each content delta; the first one sets the time to first token."""
        if self.ttft_s is None:
            self.ttft_s = time.perf_counter() - self.started

    def row(self) -> dict:
        return request_row(
            id=self.id,
            ts=self.ts,
            status=self.status,
            messages=self.messages,
            output="".join(self.parts),
            model=self.model,
            version=self.version,
            client=self.client,
            metadata=self.metadata,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            ttft_s=self.ttft_s,
            latency_s=self.latency_s,
            error=self.error,
            confidence=self.confidence,
        )


class Recorder:
    """Log rows and metrics for the server's requests, written by one background thread."""

    def __init__(
        self, log: RequestLog | None, metrics: ServerMetrics | None, *, wait_s: float = 120.0
    ):
        if log is None and metrics is None:
            raise ValueError("A Recorder needs a RequestLog, ServerMetrics, or both.")
        self.log, self.metrics, self.wait_s = log, metrics, wait_s
        self._queue: queue.SimpleQueue[Exchange | None] = queue.SimpleQueue()
        self._pending: dict[str, threading.Event] = {}  # ids whose rows are not written yet
        self._done = threading.Condition()
        self._queued = self._written = 0
        self._thread = threading.Thread(target=self._write_loop, daemon=True, name="monitor-log")
        self._thread.start()

    def begin(self, request_id: str) -> Exchange:
        """A request has arrived (its row is pending from now on)."""
        if self.log is not None:
            self._pending[request_id] = threading.Event()
        return Exchange(request_id, time.time(), time.perf_counter())

    def finish(self, exchange: Exchange, status: int, error: str | None = None) -> None:
        """The request is over (the first call counts): queue its row and metrics."""
        if exchange.finished:
            return
        exchange.finished = True
        exchange.latency_s = time.perf_counter() - exchange.started
        exchange.status, exchange.error = status, error
        with self._done:
            self._queued += 1
        self._queue.put(exchange)

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            exchanges = [e for e in batch if e is not None]
            try:
                rows = [e.row() for e in exchanges]
                if self.metrics is not None:
                    for e, row in zip(exchanges, rows, strict=True):
                        self.metrics.observe(row, model=e.model if e.served else "")
                if self.log is not None and rows:
                    self.log.add_requests(rows)
            except Exception:  # the server keeps serving; the log says what was not recorded
                logger.exception("Could not record %d requests", len(exchanges))
            finally:
                for e in exchanges:
                    if (written := self._pending.pop(e.id, None)) is not None:
                        written.set()
                with self._done:
                    self._written += len(exchanges)
                    self._done.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every request finished so far is recorded; False on timeout."""
        with self._done:
            target = self._queued
            return self._done.wait_for(lambda: self._written >= target, timeout_s)

    def feedback(self, request_id: str, rating: str | int, correction: str | None = None) -> int:
        """Store feedback (waiting for the request's row if it is still queued); +1 or -1."""
        if self.log is None:
            raise FeedbackError(
                501,
                "feedback_not_enabled",
                "This server keeps no request log, so feedback has nowhere to go: start it "
                "with log=RequestLog(path).",
            )
        if (written := self._pending.get(request_id)) is not None:
            written.wait(self.wait_s)  # a request still running or queued: wait for its row
        value = self.log.add_feedback(request_id, rating, correction)
        if self.metrics is not None:
            self.metrics.add_feedback(value)
        return value

    def close(self) -> None:
        """Write what is queued, then stop the writer thread; calling it twice is fine."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)
