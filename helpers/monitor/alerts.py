"""The repository's Prometheus alert rules, evaluated offline on the request log.

    >>> from helpers.monitor.alerts import evaluate
    >>> from helpers.monitor.drift import drift_windows
    >>> drift = drift_windows(day1_log, log)                  # the drift job, per window
    >>> timeline = evaluate(log, drift=drift)                  # one row per rule per step
    >>> timeline[timeline.firing].groupby("alert").window_end.min()

For learners without a Prometheus server. Each rule in monitoring/prometheus/alerts.yml has an
offline counterpart below that computes the same quantity from the request log (columns of
``RequestLog.frame()``) over the rule's range window (``[30m]``), compares it with the threshold
written in the rule, and honours ``for:`` like Prometheus does (pending until the condition has
held that long). Thresholds, windows, ``for:`` and the evaluation interval are read from the file
and nowhere else. The clock is ``replay_ts`` where a replay set it, else ``ts``.

Differences from Prometheus, on purpose: counts in a window are exact (Prometheus extrapolates
``rate``/``increase`` to the window edges), and p95 latency is the sample quantile (Prometheus
interpolates inside histogram buckets, so its value lies in the same bucket, not on the sample).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ALERTS_YML = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "alerts.yml"
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RANGE = re.compile(r"\[(\d+[smhd])\]")
_COMPARISON = re.compile(r"(>=|<=|>|<)\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}


def seconds(duration: str) -> int:
    """Seconds of a Prometheus duration such as ``30m`` (one unit, as the rules use)."""
    m = _DURATION.match(str(duration).strip())
    if not m:
        raise ValueError(f"cannot read duration {duration!r}: write it like 30s, 10m, 1h or 1d")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True)
class Rule:
    """One alerting rule as written in alerts.yml, with the parts the offline check needs."""

    name: str
    expr: str
    op: str
    threshold: float
    window_s: int | None  # the range selector, e.g. [30m]; None for a gauge
    for_s: int
    interval_s: int
    severity: str
    summary: str


def load_rules(path: str | Path = ALERTS_YML) -> list[Rule]:
    """Every alerting rule in a Prometheus rule file."""
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    rules = []
    for group in doc["groups"]:
        interval = seconds(group.get("interval", "1m"))
        for r in group["rules"]:
            if "alert" not in r:
                continue
            expr = " ".join(r["expr"].split())
            cmp, ranges = _COMPARISON.search(expr), set(_RANGE.findall(expr))
            if not cmp or len(ranges) > 1:
                raise ValueError(
                    f"{path}: rule {r['alert']} must end in a comparison with a number and use "
                    f"one range window for the offline check; got {expr!r}"
                )
            rules.append(
                Rule(
                    name=r["alert"],
                    expr=expr,
                    op=cmp.group(1),
                    threshold=float(cmp.group(2)),
                    window_s=seconds(ranges.pop()) if ranges else None,
                    for_s=seconds(r.get("for", "0s")),
                    interval_s=interval,
                    severity=r.get("labels", {}).get("severity", ""),
                    summary=r.get("annotations", {}).get("summary", ""),
                )
            )
    return rules


# --- offline counterparts: the quantity each rule compares, from the log rows in its window ----


Columns = dict[str, np.ndarray]  # the log's columns as float arrays, sliced to one window


def error_rate(w: Columns) -> float:
    """Share of requests answered 5xx (llm_requests_total{code=~"5.."} / all)."""
    return float(np.mean(w["status"] >= 500)) if len(w["status"]) else math.nan


def latency_p95(w: Columns) -> float:
    """95th percentile of request latency in seconds."""
    lat = w["latency_s"][~np.isnan(w["latency_s"])]
    return float(np.quantile(lat, 0.95)) if len(lat) else math.nan


def json_valid_rate(w: Columns) -> float:
    """Share of answers that parse as JSON (requests that failed have no answer: NaN)."""
    v = w["json_valid"][~np.isnan(w["json_valid"])]
    return float(v.mean()) if len(v) else math.nan


def injection_count(w: Columns) -> float:
    """Prompt-injection attempts."""
    return float(np.nansum(w["injection"]))


def pii_count(w: Columns) -> float:
    """Answers with PII in the raw output."""
    return float(np.nansum(w["pii_in_output"]))


def columns(log: pd.DataFrame) -> Columns:
    """The columns the counterparts read, as float arrays (None -> NaN, True -> 1.0)."""
    names = ("status", "latency_s", "json_valid", "injection", "pii_in_output")
    return {
        n: pd.to_numeric(log[n].astype(object).where(log[n].notna()), errors="coerce")
        .astype(float)
        .to_numpy()
        if n in log
        else np.full(len(log), np.nan)
        for n in names
    }


# rule name -> (the metric its expression reads, the offline quantity); None: from drift scores.
OFFLINE: dict[str, tuple[str, Callable[[Columns], float] | None]] = {
    "LLMHighErrorRate": ("llm_requests_total", error_rate),
    "LLMHighLatencyP95": ("llm_request_duration_seconds_bucket", latency_p95),
    "LLMLowJsonValidRate": ("llm_answers_total", json_valid_rate),
    "LLMInjectionAttempts": ("llm_injection_attempts_total", injection_count),
    "LLMPiiInOutput": ("llm_pii_in_output_total", pii_count),
    "LLMDataDrift": ("llm_drift_score", None),
}


def clock(log: pd.DataFrame) -> pd.Series:
    """Each request's time: ``replay_ts`` where a replay set it, else the server's ``ts``."""
    if "replay_ts" not in log:
        return log["ts"].astype(float)
    return pd.to_numeric(log["replay_ts"], errors="coerce").fillna(log["ts"]).astype(float)


def _drift_max(drift: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    """max(llm_drift_score) per drift window: (window ends, sorted; the max score at each)."""
    if drift is None or drift.empty:
        return np.array([]), np.array([])
    by_end = drift.groupby("window_end")["score"].max().sort_index()
    return by_end.index.to_numpy(float), by_end.to_numpy(float)


def evaluate(
    log: pd.DataFrame,
    *,
    drift: pd.DataFrame | None = None,
    path: str | Path = ALERTS_YML,
) -> pd.DataFrame:
    """Alert timeline: one row per rule per evaluation step from the first request to the last.

    Columns: window_start, window_end (the evaluation time), alert, severity, value, threshold,
    condition (the comparison holds now), firing (it has held for the rule's ``for:``).
    ``drift`` is the drift job's output (:func:`helpers.monitor.drift.drift_windows`: window_end,
    feature, score); without it the drift rule reads no data, as a Prometheus would.
    """
    rules = load_rules(path)
    missing = [r.name for r in rules if r.name not in OFFLINE]
    if missing:
        raise KeyError(
            f"no offline counterpart for {missing} in {path}: add one to OFFLINE in "
            "helpers/monitor/alerts.py (the quantity the rule's expression computes)"
        )
    t = clock(log)
    order = np.argsort(t.to_numpy(), kind="stable")
    cols, times = {k: v[order] for k, v in columns(log).items()}, t.to_numpy()[order]
    drift_ends, drift_max = _drift_max(drift)
    rows = []
    for rule in rules:
        _, quantity = OFFLINE[rule.name]
        since = None
        start = math.floor(times[0] / rule.interval_s) * rule.interval_s
        for now in np.arange(start, times[-1] + rule.interval_s, rule.interval_s):
            lo = now - (rule.window_s or 0)
            if quantity is None:  # the gauge holds the latest drift window's scores
                k = np.searchsorted(drift_ends, now, "right")
                value = drift_max[k - 1] if k else math.nan
            else:
                i, j = np.searchsorted(times, lo, "right"), np.searchsorted(times, now, "right")
                value = quantity({k: v[i:j] for k, v in cols.items()})
            holds = not math.isnan(value) and _OPS[rule.op](value, rule.threshold)
            since = (since if since is not None else now) if holds else None
            rows.append(
                {
                    "window_start": lo,
                    "window_end": float(now),
                    "alert": rule.name,
                    "severity": rule.severity,
                    "value": value,
                    "threshold": rule.threshold,
                    "condition": holds,
                    "firing": holds and now - since >= rule.for_s,
                }
            )
    return pd.DataFrame(rows)
