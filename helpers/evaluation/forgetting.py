"""Forgetting check: did fine-tuning cost the model general ability it had before?

The general probe (``data/probe_general.jsonl``: knowledge, arithmetic, unit conversion) is
asked as a few-shot *continuation* ("问：…\\n答：…" three times, then the question), the way
lm-evaluation-harness scores base models: a base model continues text well but does not follow
a chat template, so a chat-format probe would measure format, not knowledge. The same prompt
on base and fine-tuned model tells apart "the model never knew this" (both wrong) from
"fine-tuning trained it away" (base right, fine-tuned wrong).

    >>> before = probe_report(base_model, tokenizer)
    >>> after = probe_report(tuned_model, tokenizer)
    >>> forgetting_table(before, after, threshold=0.05)  # delta per category, verdict
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from helpers.evaluation.generation import DECODING, generate_batch
from helpers.evaluation.metrics import probe_hit

# Three worked examples per language; none of them is a probe question (tested).
FEW_SHOT = {
    "zh": [
        ("一小时有多少分钟？", "60"),
        ("英国的首都是哪座城市？", "伦敦"),
        ("5 + 8 等于多少？", "13"),
    ],
    "en": [
        ("How many minutes are in an hour?", "60"),
        ("What is the capital of the United Kingdom?", "London"),
        ("What is 5 + 8?", "13"),
    ],
}
_Q = {"zh": ("问：", "\n答："), "en": ("Q: ", "\nA:")}
PROBE_MAX_NEW_TOKENS = 12  # answers are a word or a number; the first line is scored


def fewshot_prompt(question: str, lang: str) -> str:
    """Three solved examples then the question, ending where the answer should start."""
    q, a = _Q[lang]
    shots = "".join(f"{q}{sq}{a}{' ' if lang == 'en' else ''}{sa}\n\n" for sq, sa in FEW_SHOT[lang])
    return f"{shots}{q}{question}{a}"


def probe_report(
    model, tokenizer, rows: Sequence[dict] | None = None, progress: bool = True
) -> dict[str, Any]:
    """Few-shot probe accuracy overall and per category, with every reply and hit."""
    from helpers.data import load_probe

    rows = list(rows) if rows is not None else load_probe()
    prompts = [fewshot_prompt(r["question"], r["lang"]) for r in rows]
    raw = generate_batch(model, tokenizer, prompts, PROBE_MAX_NEW_TOKENS, progress=progress)
    replies = [r.strip().split("\n")[0] for r in raw]  # the answer line only
    hits = [probe_hit(reply, r["answers"]) for reply, r in zip(replies, rows, strict=True)]
    by_category: dict[str, list[bool]] = defaultdict(list)
    for r, hit in zip(rows, hits, strict=True):
        by_category[r["category"]].append(hit)
    return {
        "accuracy": sum(hits) / max(1, len(hits)),
        "by_category": {c: sum(v) / len(v) for c, v in sorted(by_category.items())},
        "decoding": {**DECODING, "max_new_tokens": PROBE_MAX_NEW_TOKENS, "format": "3-shot"},
        "answers": [
            {"id": r["id"], "reply": reply, "hit": hit}
            for r, reply, hit in zip(rows, replies, hits, strict=True)
        ],
    }


def forgetting_table(
    before: dict, after: dict, threshold: float = 0.05, after_name: str = "fine-tuned"
):
    """Probe accuracy before/after per category and overall; "forgot" if it fell > threshold."""
    import pandas as pd

    names = [*before["by_category"], "overall"]
    b = {**before["by_category"], "overall": before["accuracy"]}
    a = {**after["by_category"], "overall": after["accuracy"]}
    table = pd.DataFrame({"base": b, after_name: a}).loc[names]
    table["delta"] = table[after_name] - table["base"]
    table["threshold"] = -threshold
    table["verdict"] = ["forgot" if d < -threshold - 1e-12 else "ok" for d in table["delta"]]
    return table


CASE_KINDS = ("kept", "trained away", "never knew", "learned")


def forgetting_cases(before: dict, after: dict, rows: Sequence[dict] | None = None):
    """Each probe question classified: kept, trained away, never knew, or learned."""
    import pandas as pd

    from helpers.data import load_probe

    rows = list(rows) if rows is not None else load_probe()
    out = []
    for r, b, a in zip(rows, before["answers"], after["answers"], strict=True):
        if not r["id"] == b["id"] == a["id"]:
            raise ValueError(f"probe answers out of order at {r['id']} (base {b['id']})")
        kind = {(True, True): "kept", (True, False): "trained away"}.get(
            (b["hit"], a["hit"]), "learned" if a["hit"] else "never knew"
        )
        out.append(
            {
                "id": r["id"],
                "category": r["category"],
                "question": r["question"],
                "accepted": " / ".join(r["answers"]),
                "base": b["reply"],
                "fine-tuned": a["reply"],
                "kind": kind,
            }
        )
    return pd.DataFrame(out)
