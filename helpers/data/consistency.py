"""Label consistency: the same or near-same input with different answers, and a labelling guide.

    >>> from helpers.data import deduplicate
    >>> from helpers.data.consistency import label_conflicts
    >>> kept, pairs = deduplicate(rows)
    >>> label_conflicts(rows, pairs)  # one row per conflicting pair, both rows shown

Dedup keeps the first of two near-identical messages and drops the second, whatever their
answers; when the answers disagree that is a labelling conflict, and "first come" decides it
silently. ``label_conflicts`` turns dedup's pairs into a review table. ``guideline_table``
turns the data card's field table (data/README.md) into a labelling guideline with the value
counts and one real example per value, so annotators and reviewers argue from the same page.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .course import FIELDS, data_dir, parse_answer, same_value
from .dedup import DuplicatePair, normalize_for_hash, user_text

JUDGED = ("intent", "sentiment", "urgency")  # labels a person decides, not copied from the text


def _answer(row: Mapping[str, Any]) -> dict[str, Any]:
    return parse_answer(row["messages"][-1]["content"]) or {}


def conflict_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Fields whose answers disagree although the inputs say the same thing.

    Judged fields always count; copied fields (order id, product, amount) count only when the
    two messages are identical after normalisation, since near-identical ones may differ in
    exactly that slot.
    """
    ans_a, ans_b = _answer(a), _answer(b)
    same_text = normalize_for_hash(user_text(a)) == normalize_for_hash(user_text(b))
    fields = JUDGED if not same_text else FIELDS
    return [f for f in fields if not same_value(ans_a.get(f), ans_b.get(f))]


def label_conflicts(rows: Sequence[Mapping[str, Any]], pairs: Sequence[DuplicatePair]) -> Any:
    """DataFrame of duplicate pairs whose answers conflict: both messages, answers and places."""
    import pandas as pd

    out = []
    for p in pairs:
        a, b = rows[p.kept], rows[p.dropped]
        fields = conflict_fields(a, b)
        if fields:
            out.append(
                {
                    "kind": p.kind,
                    "similarity": round(p.similarity, 3),
                    "fields": ",".join(fields),
                    "kept": user_text(a),
                    "kept_answer": a["messages"][-1]["content"],
                    "kept_at": p.kept_where,
                    "dropped": user_text(b),
                    "dropped_answer": b["messages"][-1]["content"],
                    "dropped_at": p.dropped_where,
                }
            )
    return pd.DataFrame(
        out,
        columns=[
            "kind",
            "similarity",
            "fields",
            "kept",
            "kept_answer",
            "kept_at",
            "dropped",
            "dropped_answer",
            "dropped_at",
        ],
    )


def card_fields(card: str | Path | None = None) -> list[dict[str, str]]:
    """The field table (字段 | 取值 | 从消息中怎么得出) of the data card, one dict per field."""
    path = Path(card) if card else data_dir() / "README.md"
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("| 字段 |"))
    except StopIteration:
        raise ValueError(
            f"{path}: no field table (a markdown table whose header starts with '| 字段 |'); "
            "regenerate the card with `python data/generate.py`"
        ) from None
    table = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        field, values, rule = (c.strip() for c in line.strip("|").split("|", 2))
        table.append({"field": field, "values": values, "rule": rule})
    return table


def guideline_table(rows: Sequence[Mapping[str, Any]], card: str | Path | None = None) -> Any:
    """The card's field rules with each value's count in ``rows`` and a real example message."""
    import pandas as pd

    answers = [(_answer(r), user_text(r)) for r in rows]
    out = []
    for spec in card_fields(card):
        field = spec["field"]
        counts = Counter(
            "null" if a.get(field) is None else "value" if field not in JUDGED else a[field]
            for a, _ in answers
        )
        for value, n in counts.most_common():
            example = next(
                t
                for a, t in answers
                if (
                    "null" if a.get(field) is None else "value" if field not in JUDGED else a[field]
                )
                == value
            )
            out.append({**spec, "value": value, "rows": n, "example": example})
    return pd.DataFrame(out).set_index(["field", "value"])
