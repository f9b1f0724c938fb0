"""Prometheus metrics of the course server, served on ``GET /metrics``.

    >>> from helpers.monitor.metrics import ServerMetrics
    >>> metrics = ServerMetrics()  # its own registry: several servers in one notebook
    >>> server = start_server({"tuned": backend}, metrics=metrics)
    >>> metrics.set_drift("intent_psi", 0.31)  # the drift job publishes its scores here too
    >>> print(metrics.render().decode())  # what a Prometheus scrape of /metrics reads

The names are the ones the repository's alert rules query: ``llm_requests_total{model,version,
code}``, ``llm_request_duration_seconds``, ``llm_time_to_first_token_seconds``,
``llm_tokens_total{kind}``, ``llm_queue_depth``, ``llm_answers_total{json_valid}``,
``llm_injection_attempts_total``, ``llm_pii_in_output_total``, ``llm_feedback_total{rating}``
and ``llm_drift_score{feature}``. ``version`` is "" for a request not served through the
adapter registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text exposition format's media type
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
# The first token of a small model arrives in milliseconds: finer buckets at the low end.
TTFT_BUCKETS = (0.01, 0.025, *DURATION_BUCKETS)


class ServerMetrics:
    """The server's counters, histograms and gauges in a registry of their own (``.registry``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        common = {"registry": self.registry}
        mv = ("model", "version")
        self.requests = Counter(
            "llm_requests_total", "Chat requests by HTTP status.", [*mv, "code"], **common
        )
        self.duration = Histogram(
            "llm_request_duration_seconds",
            "Time from a request's arrival to its last byte.",
            mv,
            buckets=DURATION_BUCKETS,
            **common,
        )
        self.ttft = Histogram(
            "llm_time_to_first_token_seconds",
            "Time from a request's arrival to its first generated text.",
            mv,
            buckets=TTFT_BUCKETS,
            **common,
        )
        self.tokens = Counter(
            "llm_tokens_total", "Prompt and completion tokens.", [*mv, "kind"], **common
        )
        self.queue_depth = Gauge(
            "llm_queue_depth", "Requests running or waiting per served model.", ["model"], **common
        )
        self.answers = Counter(
            "llm_answers_total",
            "Answers by JSON validity.",
            [*mv, "json_valid"],
            **common,
        )
        self.injections = Counter(
            "llm_injection_attempts_total",
            "Prompts flagged as injections.",
            ["model"],
            **common,
        )
        self.pii = Counter(
            "llm_pii_in_output_total", "Answers that contained PII.", ["model"], **common
        )
        self.feedback = Counter(
            "llm_feedback_total", "User feedback by rating.", ["rating"], **common
        )
        self.drift = Gauge(
            "llm_drift_score",
            "Drift score per feature.",
            ["feature"],
            **common,
        )

    def observe(self, row: Mapping[str, Any], *, model: str) -> None:
        """Count one finished request: a row of :func:`helpers.monitor.log.request_row`.

        ``model`` is the label to use: the name asked for when the server serves it, else ""
        (a client sending made-up model names must not create unbounded series).
        """
        version = row.get("version") or ""
        self.requests.labels(model, version, str(row["status"])).inc()
        if row.get("latency_s") is not None:
            self.duration.labels(model, version).observe(row["latency_s"])
        if row.get("ttft_s") is not None:
            self.ttft.labels(model, version).observe(row["ttft_s"])
        self.tokens.labels(model, version, "prompt").inc(row.get("prompt_tokens") or 0)
        self.tokens.labels(model, version, "completion").inc(row.get("completion_tokens") or 0)
        if row.get("json_valid") is not None:
            self.answers.labels(model, version, str(bool(row["json_valid"])).lower()).inc()
        if row.get("injection"):
            self.injections.labels(model).inc()
        if row.get("pii_in_output"):
            self.pii.labels(model).inc()

    def add_feedback(self, rating: int) -> None:
        """Count one feedback: +1 is "up", -1 "down"."""
        self.feedback.labels("up" if rating > 0 else "down").inc()

    def track_queue(self, model: str, depth: Callable[[], float]) -> None:
        """Report ``depth()`` (requests running + waiting) as ``llm_queue_depth{model}``."""
        self.queue_depth.labels(model).set_function(depth)  # read at scrape time, free per request

    def set_drift(self, feature: str, value: float) -> None:
        """Publish a drift score (e.g. PSI of the intent distribution) for the alert rules."""
        self.drift.labels(feature).set(value)

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's current value, e.g. ``value("llm_requests_total", code="200", ...)``."""
        return self.registry.get_sample_value(name, labels)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (media type ``CONTENT_TYPE``)."""
        return generate_latest(self.registry)
