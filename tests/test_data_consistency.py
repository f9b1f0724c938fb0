"""Label conflicts between duplicates, and the guideline table generated from the data card."""

import json

import pytest

from helpers.data import FIELDS, INTENTS, card_fields, deduplicate, guideline_table, load_split
from helpers.data.consistency import label_conflicts


def _row(user, **answer):
    label = dict.fromkeys(FIELDS) | {"intent": "refund", "sentiment": "neutral", "urgency": "low"}
    content = json.dumps(label | answer, ensure_ascii=False)
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": content}]
    }


def test_judged_fields_conflict_on_near_duplicates():
    rows = [
        _row("订单DD1234567890要退款，太失望了"),
        _row("订单DD1234567890要退款，太失望了!", sentiment="negative"),  # same words, other label
        _row("我要退款，商品有问题"),
    ]
    _, pairs = deduplicate(rows, progress=False)
    table = label_conflicts(rows, pairs)
    assert list(table["fields"]) == ["sentiment"]
    assert table.iloc[0]["kept"] == "订单DD1234567890要退款，太失望了"
    assert '"negative"' in table.iloc[0]["dropped_answer"]


def test_copied_fields_conflict_only_on_identical_text():
    near = [
        _row("订单DD1234567890的发票", order_id="DD1234567890"),
        _row("订单DD1234567891的发票", order_id="DD1234567891"),
    ]
    _, pairs = deduplicate(near, threshold=0.5, progress=False)
    assert pairs and label_conflicts(near, pairs).empty  # different orders, both right
    same = [_row("发票开错了", product="耳机"), _row("发票开错了", product="鼠标")]
    _, pairs = deduplicate(same, progress=False)
    assert list(label_conflicts(same, pairs)["fields"]) == ["product"]


def test_guideline_follows_the_card():
    fields = [f["field"] for f in card_fields()]
    assert fields == list(FIELDS)
    guide = guideline_table(load_split("val"))
    assert set(guide.loc["intent"].index) == set(INTENTS)
    assert guide.loc[("intent", "refund"), "rows"] == 25
    assert "最先提到" in guide.loc[("intent", "refund"), "rule"]


def test_card_without_field_table_says_what_to_do(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("# no table\n", encoding="utf-8")
    with pytest.raises(ValueError, match="generate.py"):
        card_fields(card)
