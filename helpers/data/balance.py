"""Label distribution reports and seeded down/up-sampling.

>>> from helpers.data.balance import label_counts, intent_of
>>> label_counts(rows, intent_of)  # Counter({'track_order': 850, 'refund': 250, ...})
"""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .validation import DOWNSAMPLED, DropReport, start_report, where

Row = Mapping[str, Any]
MISSING_LABEL = "<none>"


def intent_of(row: Row) -> str:
    """The ``intent`` of the last assistant turn's JSON answer, or '<none>' if unparseable."""
    answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
    try:
        value = json.loads(answers[-1]).get("intent")
    except (IndexError, ValueError, AttributeError):
        return MISSING_LABEL
    return value if isinstance(value, str) else MISSING_LABEL


def label_counts(rows: Sequence[Row], key: Callable[[Row], str] = intent_of) -> Counter:
    """Rows per label."""
    return Counter(key(r) for r in rows)


def label_report(rows: Sequence[Row], key: Callable[[Row], str] = intent_of) -> Any:
    """DataFrame of count and share per label, plus max/min imbalance ratio in ``attrs``."""
    import pandas as pd

    counts = label_counts(rows, key)
    df = pd.DataFrame(
        {"count": list(counts.values())}, index=pd.Index(list(counts), name="label")
    ).sort_values("count", ascending=False)
    df["share"] = (df["count"] / max(1, df["count"].sum())).round(4)
    df.attrs["imbalance_ratio"] = float(df["count"].max() / df["count"].min()) if len(df) else 0.0
    return df


def _target(counts: Counter, target: int | str) -> int:
    if isinstance(target, int):
        return target
    values = list(counts.values())
    if target == "min":
        return min(values)
    if target == "max":
        return max(values)
    if target == "median":
        return int(statistics.median(values))
    raise ValueError("target must be an int, 'min', 'median' or 'max'")


def rebalance(
    rows: Sequence[Row],
    key: Callable[[Row], str] = intent_of,
    *,
    mode: str = "down",
    target: int | str = "median",
    seed: int = 0,
    report: DropReport | None = None,
) -> list[dict[str, Any]]:
    """Down-sample labels above ``target`` or up-sample (repeat) labels below it, seeded.

    Row order is kept for down-sampling; up-sampled copies are appended and counted in
    ``report.added_count`` so the ledger still balances.
    """
    if mode not in ("down", "up"):
        raise ValueError("mode must be 'down' or 'up'")
    rows = list(rows)
    report = start_report(report, len(rows))
    counts = label_counts(rows, key)
    goal = _target(counts, target)
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_label.setdefault(key(r), []).append(i)
    if mode == "down":
        drop: set[int] = set()
        for label in sorted(by_label):
            idx = by_label[label]
            if len(idx) > goal:
                drop.update(rng.sample(idx, len(idx) - goal))
        kept = []
        for i, r in enumerate(rows):
            if i in drop:
                file, line = where(r)
                report.drop(
                    file, line, DOWNSAMPLED, f"label {key(r)!r} above {goal}", stage="balance"
                )
            else:
                kept.append(dict(r))
    else:
        kept = [dict(r) for r in rows]
        for label in sorted(by_label):
            idx = by_label[label]
            extra = max(0, goal - len(idx))
            pool = idx[:]
            rng.shuffle(pool)
            picks = [pool[k % len(pool)] for k in range(extra)]
            kept.extend(dict(rows[i]) for i in picks)
            report.added_count += len(picks)
    report.close(len(kept))
    return kept


def plot_label_distribution(
    before: Mapping[str, int],
    after: Mapping[str, int] | None = None,
    ax: Any = None,
    title: str = "label distribution",
) -> Any:
    """Horizontal bar chart of label counts (optionally before vs after); returns the Axes."""
    import matplotlib.pyplot as plt

    labels = sorted(before, key=lambda k: -before[k])
    if after is not None:
        labels += [k for k in after if k not in before]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.35 * len(labels) + 1))
    ys = range(len(labels))
    h = 0.4 if after is not None else 0.8
    ax.barh(
        [y - h / 2 if after is not None else y for y in ys],
        [before.get(k, 0) for k in labels],
        height=h,
        label="before",
    )
    if after is not None:
        ax.barh([y + h / 2 for y in ys], [after.get(k, 0) for k in labels], height=h, label="after")
        ax.legend()
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.set_title(title)
    return ax
