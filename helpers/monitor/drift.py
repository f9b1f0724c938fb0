"""Input and output drift between a reference window of served traffic and a current one.

    >>> from helpers.monitor.drift import drift_report
    >>> table = drift_report(day1_log, day2_log)   # request-log frames (RequestLog.frame())
    >>> table[table.drifted]                       # feature, statistic, value, threshold, ...

Input features: prompt length and hashed character 3-grams of the prompt, and the intent the
model read from it. Output features: JSON-valid rate, each answer field's value distribution,
refusal and repetition rates, and confidence (mean token log-prob). Each feature gets an effect
size, PSI over the same bins in both windows, and a test p-value: chi-square for categories,
two-sample Kolmogorov-Smirnov for numbers (both scipy), a permutation test for the 3-grams.

Why not Evidently (the issue's first choice): evidently 0.7.23 does not import with the course's
pandas 3.1.1 (``ImportError: infer_dtype_from_object`` from pandas internals). With pandas<3 it
does run offline (3.7 s import, 0.4 s for a two-column drift report), but it would mean
downgrading pandas for the whole course and adds 40 packages, about 330 MB (scikit-learn,
statsmodels, plotly, nltk, a litestar web server, telemetry), 80 s to install. Its column drift
tests are the same scipy calls used here (chi-square, K-S) and the same PSI formula.

A feature has drifted when its PSI passes PSI_DRIFT AND its test rejects "same distribution" at
ALPHA. PSI alone grows as windows shrink (identical distributions read about
(bins - 1) * (1/n + 1/m)), so a window of 40 requests would look like drift; the test accounts
for the sample size, PSI for whether the move matters.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from helpers.data.course import FIELDS, parse_answer

# All thresholds in one place.
# PSI convention (credit scoring): < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant.
PSI_DRIFT = 0.25  # the level that marks a feature drifted (and, in alerts.yml, raises the alert)
ALPHA = 0.01  # test p-value below which the two windows are taken to differ
LENGTH_BINS = 10  # quantile bins of the reference for numeric features
NGRAM_BUCKETS = 64  # hashed character 3-gram buckets
EPS = 1e-4  # floor for empty bins in PSI (log of zero)
REFUSAL = re.compile(r"抱歉|无法|不能帮|对不起|sorry|i can(?:'|no)t|unable to", re.IGNORECASE)

COLUMNS = ["feature", "kind", "statistic", "value", "threshold", "drifted"]


def psi(reference: Iterable[float], current: Iterable[float]) -> float:
    """Population stability index of two distributions over the same bins (counts or shares)."""
    p = np.asarray(list(reference), dtype=float)
    q = np.asarray(list(current), dtype=float)
    p = np.clip(p / max(p.sum(), 1), EPS, None)
    q = np.clip(q / max(q.sum(), 1), EPS, None)
    return float(np.sum((q - p) * np.log(q / p)))


def _counts(ref: pd.Series, cur: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Counts of each category seen in either window, aligned."""
    cats = sorted(set(ref) | set(cur), key=str)
    rc, cc = Counter(ref), Counter(cur)
    return np.array([rc[c] for c in cats]), np.array([cc[c] for c in cats])


def _binned(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts over quantile bins of the reference (open-ended outer bins)."""
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, LENGTH_BINS + 1))[1:-1])
    return (
        np.bincount(np.searchsorted(edges, ref, "right"), minlength=len(edges) + 1),
        np.bincount(np.searchsorted(edges, cur, "right"), minlength=len(edges) + 1),
    )


def _feature(feature: str, kind: str, effect: float, p: float) -> list[dict]:
    """The feature's two rows, PSI and its test's p-value; drifted when both pass."""
    drifted = bool(effect > PSI_DRIFT and p < ALPHA)
    return [
        {
            "feature": feature,
            "kind": kind,
            "statistic": stat,
            "value": value,
            "threshold": limit,
            "drifted": drifted,
        }
        for stat, value, limit in (("psi", effect, PSI_DRIFT), ("p_value", p, ALPHA))
    ]


def categorical(feature: str, kind: str, ref: pd.Series, cur: pd.Series) -> list[dict]:
    """PSI and a chi-square test for a categorical feature (a rate is two categories)."""
    rc, cc = _counts(ref, cur)
    p = stats.chi2_contingency(np.vstack([rc, cc]))[1] if len(rc) > 1 else 1.0
    return _feature(feature, kind, psi(rc, cc), float(p))


def numeric(feature: str, kind: str, ref: pd.Series, cur: pd.Series) -> list[dict]:
    """PSI over reference quantile bins and a two-sample K-S test for a numeric feature."""
    r, c = ref.dropna().to_numpy(float), cur.dropna().to_numpy(float)
    if len(r) < 2 or len(c) < 2:
        return []
    return _feature(feature, kind, psi(*_binned(r, c)), float(stats.ks_2samp(r, c).pvalue))


def ngram_histograms(texts: Iterable[str], n: int = 3) -> np.ndarray:
    """Per text, character n-gram counts hashed into NGRAM_BUCKETS (crc32: same every run)."""
    texts = list(texts)
    h = np.zeros((len(texts), NGRAM_BUCKETS))
    for row, t in enumerate(texts):
        for i in range(max(1, len(t) - n + 1)):
            h[row, zlib.crc32(t[i : i + n].encode("utf-8")) % NGRAM_BUCKETS] += 1
    return h


def ngrams(feature: str, ref: pd.Series, cur: pd.Series, permutations: int = 200) -> list[dict]:
    """PSI of hashed character 3-grams and a permutation test over whole prompts.

    The 3-grams of one prompt are not independent draws, so a chi-square test on their counts
    would call every window drifted; shuffling whole prompts between the windows is valid.
    """
    hr, hc = ngram_histograms(ref.fillna("")), ngram_histograms(cur.fillna(""))
    observed = psi(hr.sum(0), hc.sum(0))
    both, rng = np.vstack([hr, hc]), np.random.default_rng(0)
    hits = 0
    for _ in range(permutations):
        idx = rng.permutation(len(both))
        hits += psi(both[idx[: len(hr)]].sum(0), both[idx[len(hr) :]].sum(0)) >= observed
    return _feature(feature, "input", observed, (hits + 1) / (permutations + 1))


def answer_features(log: pd.DataFrame) -> pd.DataFrame:
    """Per answered request: intent read, JSON validity, field presence/values, refusal..."""
    ok = log[log["status"] == 200]
    answers = ok["output"].fillna("").map(parse_answer)
    out = pd.DataFrame(index=ok.index)
    out["prompt_length"] = ok["prompt"].fillna("").str.len()
    out["intent"] = answers.map(lambda a: str(a.get("intent")) if a else "<no json>")
    out["json_valid"] = answers.map(lambda a: a is not None)
    for f in FIELDS[1:]:
        out[f"field_{f}"] = answers.map(lambda a, f=f: _field_value(f, a))
    out["refusal"] = ok["output"].fillna("").map(lambda t: bool(REFUSAL.search(t)))
    out["repetition"] = ok["output"].fillna("").map(is_repetitive)
    out["confidence"] = pd.to_numeric(ok["confidence"], errors="coerce")
    return out


def _field_value(field: str, answer: dict | None) -> str:
    """sentiment/urgency as given; other fields only present or null (ids are all different)."""
    if answer is None:
        return "<no json>"
    value = answer.get(field)
    if field in ("sentiment", "urgency"):
        return str(value)
    return "null" if value is None else "present"


def is_repetitive(text: str, n: int = 4, share: float = 0.5) -> bool:
    """True when more than ``share`` of the text's character n-grams are repeats (a loop)."""
    grams = [text[i : i + n] for i in range(len(text) - n + 1)]
    return len(grams) >= 20 and 1 - len(set(grams)) / len(grams) > share


def drift_report(reference: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """Tidy drift table (feature, kind, statistic, value, threshold, drifted) of two log frames."""
    ref, cur = answer_features(reference), answer_features(current)
    if ref.empty or cur.empty:
        raise ValueError(
            f"need answered requests (status 200) in both windows; got {len(ref)} reference "
            f"and {len(cur)} current rows. Widen the window or replay more traffic."
        )
    ok_ref, ok_cur = reference[reference["status"] == 200], current[current["status"] == 200]
    rows = numeric("prompt_length", "input", ref["prompt_length"], cur["prompt_length"])
    rows += ngrams("char_3gram", ok_ref["prompt"], ok_cur["prompt"])
    rows += categorical("intent", "input", ref["intent"], cur["intent"])
    for col in ["json_valid", *(f"field_{f}" for f in FIELDS[1:]), "refusal", "repetition"]:
        rows += categorical(col, "output", ref[col], cur[col])
    rows += numeric("confidence", "output", ref["confidence"], cur["confidence"])
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["value"] = table["value"].map(lambda v: v if math.isfinite(v) else float("nan"))
    return table


def drift_scores(table: pd.DataFrame) -> dict[str, float]:
    """One score per feature for the ``llm_drift_score{feature}`` gauge: its PSI, or 0 where
    the test does not reject "same distribution" at ALPHA (a small window's noise is not drift).
    The alert rule in monitoring/prometheus/alerts.yml compares this with PSI_DRIFT."""
    by = table.pivot(index="feature", columns="statistic", values="value")
    return {f: float(r.psi) if r.p_value < ALPHA else 0.0 for f, r in by.iterrows()}


def drift_windows(
    reference: pd.DataFrame,
    log: pd.DataFrame,
    *,
    window_s: int = 6 * 3600,
    step_s: int = 3600,
    min_rows: int = 20,
) -> pd.DataFrame:
    """The drift job: every ``step_s``, the drift of the trailing ``window_s`` against
    ``reference``; windows with fewer than ``min_rows`` answers are skipped (no score, as
    when the job has too little to go on). Returns the drift tables stacked, with window_start,
    window_end and ``score`` (what the job would set as ``llm_drift_score{feature}``)."""
    from helpers.monitor.alerts import clock

    t = clock(log)
    tables = []
    for end in np.arange(math.floor(t.min() / step_s) * step_s + step_s, t.max() + step_s, step_s):
        window = log[(t > end - window_s) & (t <= end)]
        if (window["status"] == 200).sum() < min_rows:
            continue
        table = drift_report(reference, window)
        scores = drift_scores(table)
        table["score"] = table["feature"].map(scores)
        tables.append(table.assign(window_start=end - window_s, window_end=float(end)))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
