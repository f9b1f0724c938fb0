"""Metric arithmetic: perplexity, character ROUGE-L, probe matching, per-row task scores, AUROC.

Pure functions on strings and numbers (no model), so each is unit-tested against values
computed by hand.

    >>> rouge_l_chars("我是小调", "我叫小调")  # LCS 我小调 = 3 of 4 characters
    0.75
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token); NaN when no token was scored."""
    return math.exp(nll_sum / n_tokens) if n_tokens else float("nan")


def _lcs(a: str, b: str) -> int:
    """Length of the longest common subsequence of two strings (dynamic programming)."""
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_chars(prediction: str, reference: str) -> float:
    """Character-level ROUGE-L F1 (whitespace ignored): suits Chinese, which has no spaces."""
    pred, ref = "".join(prediction.split()), "".join(reference.split())
    if not pred or not ref:
        return 0.0
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def probe_hit(reply: str, answers: Sequence[str]) -> bool:
    """True when the reply contains an accepted answer; numbers must not be part of a longer one.

    ``"12"`` matches "一年有 12 个月" but not "120"; text answers match case-insensitively.
    """
    text = reply.lower()
    for answer in answers:
        a = answer.lower()
        if a.isdigit():
            if re.search(rf"(?<![\d.]){re.escape(a)}(?![\d]|\.\d)", text):
                return True
        elif a in text:
            return True
    return False


def task_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Main-task scores: json_valid, exact_match, field_* and field_accuracy (their mean)."""
    from helpers.data import FIELDS, score_answers

    scores = score_answers(predictions, references)
    scores["field_accuracy"] = sum(scores[f"field_{f}"] for f in FIELDS) / len(FIELDS)
    return scores


def row_scores(prediction: str, reference: str) -> dict[str, float]:
    """One main-task answer scored (each score 0 or 1; field_accuracy in sixths)."""
    return task_scores([prediction], [reference])


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Chance that a random positive scores above a random negative (ties count half).

    None when one class is empty. 1.0: the score separates them perfectly; 0.5: no signal.
    """
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))
