"""The data flywheel: bad cases mined from the request log become round-2 training data.

The loop of notebook 07, one function per step, each returning a table a person can read:

    >>> held, mine = split_holdout(traffic_ids, share=0.4)  # day-2 rows kept for evaluation
    >>> cases = mine_bad_cases(log_frame, low_confidence=-0.9)  # why each request is suspect
    >>> labelled = attach_corrections(cases, truth)  # feedback first, else the labeller
    >>> rows, ledger = round2_rows(labelled, train_rows, test_rows, profile)
    >>> pairs = preference_pairs(labelled)  # rejected = what was served

Nothing is dropped silently: ``round2_rows`` returns a ledger with one line per mined case,
kept or dropped with its reason (no right answer, duplicate of a training row, overlaps the
test set), and ``mined = kept + dropped`` holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

# Why a served answer is worth a human look, in the order they are reported.
REASONS = ("invalid_json", "thumbs_down", "low_confidence", "injection")


def split_holdout(ids: Sequence[str], share: float, salt: str = "round2") -> tuple[set, set]:
    """(held-out ids, mining ids): a stable split by hash, so a rerun holds out the same rows."""
    if not 0 < share < 1:
        raise ValueError(f"share must be between 0 and 1, got {share}")

    def bucket(i: str) -> float:
        return int(hashlib.sha256(f"{salt}:{i}".encode()).hexdigest()[:8], 16) / 16**8

    held = {i for i in ids if bucket(i) < share}
    return held, set(ids) - held


def mine_bad_cases(log, *, low_confidence: float, ids: set | None = None):
    """The answered requests worth a look, one row each with its ``reasons``.

    ``log`` is ``RequestLog.frame()``; ``ids`` limits mining to requests whose
    ``metadata["traffic_id"]`` is in it (the mining half of day 2). A request is suspect when its
    answer is not JSON, a user gave it 👎, its mean token log-probability is below
    ``low_confidence``, or its prompt looks like an injection.
    """
    import pandas as pd

    rows = []
    for r in log.itertuples(index=False):
        traffic_id = (r.metadata or {}).get("traffic_id")
        if r.status != 200 or (ids is not None and traffic_id not in ids):
            continue
        flags = {  # the log's nullable columns hold pd.NA / NaN where a value is missing
            "invalid_json": _known(r.json_valid) and not r.json_valid,
            "thumbs_down": _known(r.feedback_rating) and r.feedback_rating == -1,
            "low_confidence": _known(r.confidence) and r.confidence < low_confidence,
            "injection": _known(r.injection) and bool(r.injection),
        }
        reasons = [k for k in REASONS if flags[k]]
        if reasons:
            rows.append(
                {
                    "request_id": r.id,
                    "traffic_id": traffic_id,
                    "version": r.version,
                    "reasons": reasons,
                    "messages": r.messages,
                    "served": r.output,
                    "confidence": r.confidence,
                    "feedback_correction": r.feedback_correction,
                }
            )
    columns = ["request_id", "traffic_id", "version", "reasons", "messages", "served"]
    return pd.DataFrame(rows, columns=[*columns, "confidence", "feedback_correction"])


def _known(value: Any) -> bool:
    import pandas as pd

    return value is not None and not pd.isna(value)


def attach_corrections(cases, truth: Mapping[str, str | None]):
    """Each case with its ``correction`` and where it came from (``label_source``).

    A user's correction from feedback wins when it is a valid answer; otherwise ``truth``
    (traffic id -> reference answer, the hidden labels standing in for a human labeller)
    gives it. ``None`` means no answer is right (e.g. a bare injection): such a case is
    reported, and never trained on.
    """
    import pandas as pd

    from helpers.data.course import parse_answer

    cases = cases.copy()
    corrections, sources = [], []
    for c in cases.itertuples(index=False):
        fed = c.feedback_correction
        if isinstance(fed, str) and parse_answer(fed) is not None:
            corrections.append(fed)
            sources.append("feedback")
        else:
            corrections.append(truth.get(c.traffic_id))
            sources.append("labeller")
    cases["correction"] = pd.Series(corrections, index=cases.index, dtype=object)  # None stays None
    cases["label_source"] = sources
    cases["served_was_right"] = [
        same_answer(s, c) for s, c in zip(cases["served"], corrections, strict=True)
    ]
    return cases


def same_answer(served: str, correction: str | None) -> bool:
    """True when ``served`` parses and every field equals the correction's (04's scoring)."""
    from helpers.data.course import parse_answer, same_value

    got, want = parse_answer(served or ""), parse_answer(correction or "")
    return got is not None and want is not None and same_value(got, want)


def review_box(cases):
    """A reviewer's desk for the labelled cases: pick one, read it, edit its correction.

    Edits are written back into ``cases["correction"]`` (and ``label_source`` becomes
    "reviewer"); run ``round2_rows`` after reviewing. Unattended runs leave it untouched.
    """
    import html

    import ipywidgets as w

    if cases.empty:
        return w.HTML("没有坏例需要审阅。")
    picker = w.Dropdown(
        options=[(f"{c.traffic_id}: {', '.join(c.reasons)}", i) for i, c in cases.iterrows()],
        description="坏例",
        layout=w.Layout(width="60%"),
    )
    shown = w.HTML()
    box = w.Textarea(description="纠正", layout=w.Layout(width="90%", height="4em"))

    def show(change=None) -> None:
        c = cases.loc[picker.value]
        prompt = next(m["content"] for m in reversed(c["messages"]) if m["role"] == "user")
        shown.value = (
            f"<b>用户</b>：{html.escape(prompt)}<br><b>模型</b>：{html.escape(str(c['served']))}"
            f"<br><b>来源</b>：{c['label_source']}"
        )
        box.value = c["correction"] or ""

    def save(change) -> None:
        if change["new"] != (cases.at[picker.value, "correction"] or ""):
            cases.at[picker.value, "correction"] = change["new"] or None
            cases.at[picker.value, "label_source"] = "reviewer"
            right = same_answer(cases.at[picker.value, "served"], change["new"] or None)
            cases.at[picker.value, "served_was_right"] = right

    picker.observe(show, names="value")
    box.observe(save, names="value")
    show()
    return w.VBox([picker, shown, box])


def round2_rows(cases, train_rows: Sequence[dict], test_rows: Sequence[dict], profile):
    """Training rows from the labelled cases, and a ledger of every case: kept or why not.

    Dropped: no right answer (``correction`` is None), the served answer was already right
    (a false alarm: nothing to teach), a duplicate of a training row or of an earlier case
    (exact or near, helpers.data.dedup), or an overlap with the test set (decontamination).
    Rows are styled like 03's training rows (``profile.style_messages``).
    """
    import pandas as pd

    from helpers.data.dedup import deduplicate, find_overlap

    ledger, candidates = [], []
    for c in cases.itertuples(index=False):
        entry = {"request_id": c.request_id, "traffic_id": c.traffic_id, "kept": False}
        if c.correction is None:
            ledger.append({**entry, "reason": "no right answer"})
        elif c.served_was_right:
            ledger.append({**entry, "reason": "served answer was right"})
        else:
            prompt = [m for m in c.messages if m["role"] != "assistant"]
            messages = [*prompt, {"role": "assistant", "content": c.correction}]
            candidates.append({**entry, "messages": profile.style_messages(messages)})
    n_train = len(train_rows)
    # Cases after the training rows: deduplicate keeps first occurrences, so a case that
    # repeats a training row (or an earlier case) is the one dropped.
    pool = [{"messages": r["messages"]} for r in train_rows] + candidates
    _, pairs = deduplicate(pool, progress=False)
    dropped = {p.dropped for p in pairs if p.dropped >= n_train}
    survivors = []
    for i, cand in enumerate(candidates):
        if n_train + i in dropped:
            ledger.append({**_entry(cand), "reason": "duplicate of training data or a case"})
        else:
            survivors.append(cand)
    overlap = {o.train for o in find_overlap(survivors, list(test_rows), progress=False)}
    rows = []
    for i, cand in enumerate(survivors):
        if i in overlap:
            ledger.append({**_entry(cand), "reason": "overlaps the test set"})
        else:
            ledger.append({**_entry(cand), "kept": True, "reason": "kept"})
            rows.append({"messages": cand["messages"]})
    return rows, pd.DataFrame(ledger, columns=["request_id", "traffic_id", "kept", "reason"])


def _entry(cand: Mapping[str, Any]) -> dict[str, Any]:
    return {"request_id": cand["request_id"], "traffic_id": cand["traffic_id"], "kept": False}


def preference_pairs(cases) -> list[dict[str, Any]]:
    """TRL's conversational preference rows: chosen = the correction, rejected = what was served.

    Only cases with a correction that differs from the served answer (a preference needs two
    different answers); 10's DPO reads this layout (``prompt``, ``chosen``, ``rejected``).
    """
    pairs = []
    for c in cases.itertuples(index=False):
        if c.correction is None or c.served_was_right:
            continue
        prompt = [m for m in c.messages if m["role"] != "assistant"]
        pairs.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": c.correction}],
                "rejected": [{"role": "assistant", "content": c.served}],
                "request_id": c.request_id,
            }
        )
    return pairs


def round2_mix(cases: Sequence[dict], train_rows: Sequence[dict], repeat: int, old: int, seed=0):
    """The round-2 training set: each case ``repeat`` times, plus ``old`` rows of round 1's data.

    Repeating the cases up-samples what the model got wrong; the old rows are replay, so
    round 2 does not trade the behaviour round 1 learned for the new cases.
    """
    import random

    rng = random.Random(seed)
    old_rows = rng.sample(list(train_rows), min(old, len(train_rows)))
    mix = [{"messages": r["messages"]} for r in [*cases] * repeat + old_rows]
    rng.shuffle(mix)
    return mix


def data_hash(rows: Sequence[Mapping[str, Any]]) -> str:
    """A short content hash of training rows, for the registry (same rows, same hash)."""
    canonical = "\n".join(
        json.dumps(r["messages"], ensure_ascii=False, sort_keys=True) for r in rows
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
