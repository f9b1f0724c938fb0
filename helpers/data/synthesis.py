"""Offline, seeded, multi-step synthesis of new training rows, each checked before it is kept.

    >>> from helpers.data.synthesis import synthesize
    >>> result = synthesize(train_rows, n=200, seed=0, test_rows=load_split("test"))
    >>> result.rows, result.report.counts()  # kept rows; rejects per reason

Each new row starts from a real row and goes through three steps, each seeded:

1. **paraphrase**: phrase swaps that keep the request ("请问" -> "想问一下", "帮我" -> "麻烦帮我"),
   or, on a GPU profile, the profile's instruct model rewrites the message (``llm_paraphraser``);
2. **compose**: a context opener and a closing line from other customers' messages;
3. **noise**: typos, mixed zh-en ("订单" -> "order") and emoji, as real users write.

The answer is the source row's. A step may break it (drop the order id, add "急" and so make
urgency high), so every candidate is checked against its answer before it is kept
(``label_problems``): copied fields (order id, product, amount) must still be in the text, and
sentiment and urgency recomputed with the data card's cue rules must agree. Then the survivors
are de-duplicated (against each other and the source rows) and decontaminated against the test
split, and every rejected candidate is in ``report`` with its reason, like every other drop.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .consistency import card_fields
from .course import parse_answer
from .dedup import decontaminate, deduplicate, user_text
from .validation import NEAR_DUPLICATE, DropReport

LABEL_INCONSISTENT = "label_inconsistent"
STEPS = ("paraphrase", "compose", "noise")

PHRASES = {  # request-preserving rewrites (the intent words stay)
    "请问": "想问一下",
    "帮我": "麻烦帮我",
    "能不能": "可不可以",
    "能帮我": "可以帮我",
    "怎么还": "为什么还",
    "我的": "我这个",
    "想知道": "想了解一下",
    "一直": "老是",
    "我要": "我想",
}
OPENERS = [
    "你好，",
    "在吗？",
    "客服你好，",
    "hi，",
    "打扰一下，",
    "上周在你们店买的。",
    "是帮家里人买的。",
]
# Some closers and emoji carry a cue (急 -> urgency high, 谢谢/😊 -> positive): naive augmentation
# does this all the time, and label_problems must catch it.
CLOSERS = ["", "。", "，麻烦了", "，看到回复一下", "~", " 多谢", "，急急急", " 谢谢"]
TYPOS = {
    "什么": "神马",
    "怎么": "咋",
    "一下": "一哈",
    "已经": "以经",
    "收到": "收倒",
    "订单": "定单",
}
MIXED = {
    "订单": "order ",
    "退款": "refund ",
    "发票": "invoice ",
    "物流": "物流 tracking ",
    "地址": "address ",
}
EMOJI = ["🙏", "🤔", "📦", "✨", "🚚", "😅", "😊"]


def _cues(field: str) -> tuple[list[str], list[str]]:
    """The (strong, weak) cue words of sentiment or urgency, read from the data card's rule."""
    rule = next(f["rule"] for f in card_fields() if f["field"] == field)
    lists = [
        [w.strip().casefold() for w in m.split("、")] for m in re.findall(r"（([^）]*)）", rule)
    ]
    return lists[0], lists[1]


def card_label(text: str, field: str) -> str:
    """sentiment or urgency of ``text`` by the data card's cue rules."""
    strong, weak = _cues(field)
    names = {"sentiment": ("negative", "positive", "neutral"), "urgency": ("high", "medium", "low")}
    t = text.casefold()
    first, second, other = names[field]
    return first if any(w in t for w in strong) else second if any(w in t for w in weak) else other


def label_problems(row: Mapping[str, Any]) -> list[str]:
    """Why the answer no longer fits the message (empty when it does)."""
    answer = parse_answer(row["messages"][-1]["content"])
    if answer is None:
        return ["answer is not JSON"]
    text = user_text(row)
    problems = []
    if answer.get("order_id") and answer["order_id"].casefold() not in text.casefold():
        problems.append("order_id not in text")
    if answer.get("product") and answer["product"] not in text:
        problems.append("product not in text")
    if answer.get("amount") is not None and not re.search(r"\d|[一二三四五六七八九十百千]", text):
        problems.append("amount not in text")
    for field in ("sentiment", "urgency"):
        if answer.get("intent") == "complaint" and field == "sentiment":
            continue  # complaints are negative by definition, cue or not
        got = card_label(text, field)
        if answer.get(field) != got:
            problems.append(f"{field} {answer.get(field)} but cues say {got}")
    return problems


def paraphrase(rng: random.Random, text: str) -> str:
    """Swap up to two request-preserving phrases."""
    found = [k for k in PHRASES if k in text]
    for k in rng.sample(found, min(2, len(found))):
        text = text.replace(k, PHRASES[k], 1)
    return text


def compose(rng: random.Random, text: str) -> str:
    """Add an opener and a closing line."""
    return rng.choice(OPENERS) + text.rstrip("。~") + rng.choice(CLOSERS)


def noise(rng: random.Random, text: str) -> str:
    """One typo or mixed zh-en swap, and an emoji half of the time."""
    table = TYPOS if rng.random() < 0.5 else MIXED
    found = [k for k in table if k in text]
    if found:
        k = rng.choice(found)
        text = text.replace(k, table[k], 1)
    if rng.random() < 0.5:
        text += rng.choice(EMOJI)
    return text


def llm_paraphraser(
    model, tokenizer, max_new_tokens: int = 80, batch_size: int = 32
) -> Callable[[list[str]], list[str]]:
    """Rewrite messages with an instruct model (greedy, batched): the GPU profiles' paraphrase."""
    from helpers.evaluation import generate_batch

    instruction = (
        "把下面这条电商客服消息换一种说法改写，订单号、商品名、金额原样保留，语气和紧急程度不变，"
        "只输出改写后的消息：\n"
    )

    def rewrite(texts: list[str]) -> list[str]:
        chats = [[{"role": "user", "content": instruction + t}] for t in texts]
        replies = generate_batch(
            model, tokenizer, chats, max_new_tokens, batch_size=batch_size, progress=False
        )
        return [r.strip().splitlines()[0] if r.strip() else "" for r in replies]

    return rewrite


@dataclass
class SynthesisResult:
    """Kept synthetic rows, the ledger of candidates (input = kept + dropped) and examples."""

    rows: list[dict[str, Any]]
    report: DropReport
    examples: list[dict[str, str]]


def synthesize(
    rows: Sequence[Mapping[str, Any]],
    n: int,
    *,
    seed: int = 0,
    steps: Sequence[str] = STEPS,
    test_rows: Sequence[Mapping[str, Any]] = (),
    threshold: float = 0.7,
    paraphraser: Callable[[list[str]], list[str]] | None = None,
) -> SynthesisResult:
    """``n`` candidates from seeded sources and steps; keep those that pass every check."""
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)}; choose from {STEPS}")
    rng = random.Random(seed)
    sources = [rows[rng.randrange(len(rows))] for _ in range(n)]
    texts = [user_text(r) for r in sources]
    if "paraphrase" in steps and paraphraser is not None:
        texts = paraphraser(texts)
    fns = {"paraphrase": paraphrase, "compose": compose, "noise": noise}
    report = DropReport(input_count=n)
    candidates, examples = [], []
    for k, (src, text) in enumerate(zip(sources, texts, strict=True)):
        for step in steps:
            if step != "paraphrase" or paraphraser is None:
                text = fns[step](rng, text)
        messages = [dict(m) for m in src["messages"]]
        messages[-2] = {"role": "user", "content": text}
        row = {"messages": messages, "source": {"file": "<synthetic>", "line": k + 1}}
        row["meta"] = {"synthetic": True, "from": user_text(src), "steps": list(steps)}
        problems = label_problems(row)
        if problems:
            report.drop(
                "<synthetic>", k + 1, LABEL_INCONSISTENT, "; ".join(problems), stage="check"
            )
            continue
        candidates.append(row)
        if len(examples) < 5:
            examples.append({"source": user_text(src), "synthetic": text})
    # dedup against the source rows too: a near-copy of a real row adds nothing new
    kept, _ = deduplicate([*rows, *candidates], threshold=threshold, progress=False)
    fresh = [r for r in kept if r.get("meta", {}).get("synthetic")]
    gone = {r["source"]["line"] for r in candidates} - {r["source"]["line"] for r in fresh}
    for line in sorted(gone):
        report.drop(
            "<synthetic>", line, NEAR_DUPLICATE, "of a real or synthetic row", stage="dedup"
        )
    fresh, _ = decontaminate(
        fresh, list(test_rows), report=report, threshold=threshold, progress=False
    )
    report.close(len(fresh))
    return SynthesisResult(fresh, report, examples)
