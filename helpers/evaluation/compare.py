"""Base vs fine-tuned, side by side: the same prompts and decoding, differences highlighted.

>>> cases = side_by_side(before["answers"], after["answers"])
>>> cases["change"].value_counts()  # improved / regressed / both right / both wrong
>>> case_browser(cases)  # ipywidgets: filter by change, step through cases
"""

from __future__ import annotations

import difflib
import html
from collections.abc import Sequence

from helpers.evaluation.metrics import rouge_l_chars, row_scores

CHANGES = ("improved", "regressed", "both right", "both wrong")


def _reference_rows() -> dict[tuple[str, str], dict]:
    """Evaluation rows by (set, id): main test split and self-cognition questions."""
    from helpers.data import load_self_cognition, load_split

    rows = {("main_test", r["id"]): r for r in load_split("test")}
    rows |= {("self_cognition", r["id"]): r for r in load_self_cognition()}
    return rows


def _score(set_name: str, answer: str, reference: str) -> float:
    """0..1: field accuracy for the JSON task, character ROUGE-L for free text."""
    if set_name == "main_test":
        return row_scores(answer, reference)["field_accuracy"]
    return rouge_l_chars(answer, reference)


def side_by_side(base_answers: Sequence[dict], tuned_answers: Sequence[dict]):
    """One row per prompt: user text, reference, both answers, their scores and the change.

    ``*_answers`` are the ``answers`` lists of two ``behaviour_report`` results (same prompts).
    Score: field accuracy on the JSON task, character ROUGE-L on free text (self-cognition).
    """
    import pandas as pd

    refs = _reference_rows()
    tuned = {(a["set"], a["id"]): a["answer"] for a in tuned_answers}
    missing = [a["id"] for a in base_answers if (a["set"], a["id"]) not in tuned]
    if missing:
        raise ValueError(f"{len(missing)} prompts have no fine-tuned answer (e.g. {missing[0]})")
    out = []
    for a in base_answers:
        key = (a["set"], a["id"])
        row = refs[key]
        reference = row["messages"][-1]["content"]
        b_score, t_score = (_score(a["set"], x, reference) for x in (a["answer"], tuned[key]))
        if t_score == b_score:
            change = "both right" if t_score == 1.0 else "both wrong"
        else:
            change = "improved" if t_score > b_score else "regressed"
        out.append(
            {
                "set": a["set"],
                "id": a["id"],
                "prompt": row["messages"][-2]["content"],
                "reference": reference,
                "base": a["answer"],
                "fine-tuned": tuned[key],
                "base_score": round(b_score, 3),
                "tuned_score": round(t_score, 3),
                "change": change,
            }
        )
    return pd.DataFrame(out)


def diff_html(old: str, new: str) -> tuple[str, str]:
    """Both strings as HTML with their character differences marked (red: old only; green: new)."""
    a_out, b_out = [], []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        a, b = html.escape(old[i1:i2]), html.escape(new[j1:j2])
        if op == "equal":
            a_out.append(a)
            b_out.append(b)
            continue
        if a:
            a_out.append(
                f'<span style="background:#f8c4c4;text-decoration:line-through">{a}</span>'
            )
        if b:
            b_out.append(f'<span style="background:#bfe8c0">{b}</span>')
    return "".join(a_out), "".join(b_out)


def case_html(case) -> str:
    """One case as HTML: prompt, reference, and the two answers diffed against each other."""
    base, tuned = diff_html(case["base"], case["fine-tuned"])
    cell = "padding:4px 8px;vertical-align:top;font-family:monospace;white-space:pre-wrap"
    rows = [
        ("prompt", html.escape(case["prompt"])),
        ("reference", html.escape(case["reference"])),
        (f"base ({case['base_score']:.2f})", base or "<i>(empty)</i>"),
        (f"fine-tuned ({case['tuned_score']:.2f})", tuned or "<i>(empty)</i>"),
    ]
    body = "".join(
        f'<tr><th style="text-align:right;{cell}">{k}</th><td style="{cell}">{v}</td></tr>'
        for k, v in rows
    )
    head = f"<b>{case['set']} · {case['id']} · {case['change']}</b>"
    return f'<div>{head}<table style="border-collapse:collapse">{body}</table></div>'


def case_browser(cases):
    """ipywidgets browser: choose a change kind, step through its cases."""
    import ipywidgets as widgets

    kinds = ["all", *[c for c in CHANGES if (cases["change"] == c).any()]]
    kind = widgets.Dropdown(options=kinds, description="change")
    index = widgets.IntSlider(min=0, max=max(0, len(cases) - 1), description="case")
    view = widgets.HTML()

    def selected():
        return cases if kind.value == "all" else cases[cases["change"] == kind.value]

    def show(*_):
        chosen = selected()
        index.max = max(0, len(chosen) - 1)
        view.value = case_html(chosen.iloc[min(index.value, index.max)]) if len(chosen) else ""

    kind.observe(show, names="value")
    index.observe(show, names="value")
    show()
    return widgets.VBox([widgets.HBox([kind, index]), view])
