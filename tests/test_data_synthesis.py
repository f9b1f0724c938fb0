"""Synthesis is seeded, every kept row is label-consistent, and nothing leaves the ledger."""

import json

import pytest

from helpers.data import FIELDS, load_split, user_text
from helpers.data.synthesis import card_label, label_problems, llm_paraphraser, synthesize

ROWS = load_split("train")[:200]


def _row(user, **answer):
    label = dict.fromkeys(FIELDS) | {"intent": "refund", "sentiment": "neutral", "urgency": "low"}
    content = json.dumps(label | answer, ensure_ascii=False)
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": content}]
    }


def test_card_rules_label_the_cues():
    assert card_label("太失望了，快点哈", "sentiment") == "negative"
    assert card_label("谢谢😊", "sentiment") == "positive"
    assert card_label("快点哈", "urgency") == "medium"
    assert card_label("今天必须到", "urgency") == "high"
    assert card_label("我的订单到哪了", "urgency") == "low"


def test_label_problems_catch_broken_rows():
    assert label_problems(_row("订单DD1234567890要退款", order_id="DD1234567890")) == []
    assert label_problems(_row("订单dd1234567890要退款", order_id="DD1234567890")) == []
    assert label_problems(_row("要退款", order_id="DD1234567890")) == ["order_id not in text"]
    assert label_problems(_row("耳机要退款", product="鼠标")) == ["product not in text"]
    assert label_problems(_row("要退款，急急急")) == ["urgency low but cues say high"]
    assert label_problems(_row("要退款 谢谢")) == ["sentiment neutral but cues say positive"]
    assert label_problems(_row("质量太差，投诉", intent="complaint", sentiment="negative")) == []


def test_synthesis_is_seeded_checked_and_balanced():
    a, b = synthesize(ROWS, 120, seed=1), synthesize(ROWS, 120, seed=1)
    assert [user_text(r) for r in a.rows] == [user_text(r) for r in b.rows]
    assert [user_text(r) for r in synthesize(ROWS, 120, seed=2).rows] != [
        user_text(r) for r in a.rows
    ]
    a.report.verify()  # candidates == kept + dropped
    assert a.report.input_count == 120 and a.rows
    assert a.report.counts().get("label_inconsistent", 0) > 0  # cue-carrying closers are caught
    real = {user_text(r) for r in ROWS}
    by_text = {user_text(r): r["messages"][-1]["content"] for r in ROWS}
    for row in a.rows:
        assert label_problems(row) == [] and user_text(row) not in real
        assert row["messages"][-1]["content"] == by_text[row["meta"]["from"]]


def test_rows_matching_the_test_split_are_dropped():
    first = synthesize(ROWS, 60, seed=3)
    leaked = first.rows[:3]
    again = synthesize(ROWS, 60, seed=3, test_rows=leaked)
    assert len(again.report.by_reason("test_overlap")) == 3
    assert not {user_text(r) for r in leaked} & {user_text(r) for r in again.rows}


def test_a_paraphraser_that_loses_the_order_id_is_caught():
    def careless(texts):  # a model that "paraphrases" by dropping every order id
        return ["我想问问这个订单" if "DD" in t.upper() else t + "呀" for t in texts]

    result = synthesize(ROWS, 80, seed=0, steps=("paraphrase",), paraphraser=careless)
    assert any("order_id" in d.detail for d in result.report.by_reason("label_inconsistent"))
    assert all(label_problems(r) == [] for r in result.rows)
    with pytest.raises(ValueError, match="unknown steps"):
        synthesize(ROWS, 1, steps=("translate",))


def test_llm_paraphraser_runs_the_model(tiny_dir):
    from helpers.models import load_model
    from helpers.profiles import get_profile

    model, tokenizer = load_model(get_profile("tiny"), path=tiny_dir)
    rewrite = llm_paraphraser(model, tokenizer, max_new_tokens=8)
    out = rewrite(["我的订单DD1234567890到哪了", "发票开错了"])
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
