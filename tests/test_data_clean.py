"""Normalisation, PII masking, answer/length filters, label balance and diversity metrics."""

from __future__ import annotations

import json
import random

import pytest

from helpers.data import (
    DropReport,
    clean_rows,
    distinct_n,
    diversity_report,
    find_pii,
    id_card_check_char,
    intent_of,
    is_valid_id_card,
    label_counts,
    label_report,
    mask_pii,
    normalize_text,
    rebalance,
)


def row(user: str, answer: str = '{"intent":"refund"}', line: int = 1) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        "source": {"file": "f.jsonl", "line": line},
    }


def test_normalize_text():
    assert normalize_text("ＡＢＣ１２３，好！") == "ABC123,好!"
    assert normalize_text("a\u200bb\ufeff") == "ab"
    assert normalize_text("  x \t y \r\n\r\n\r\n\r\n z  ") == "x y\n\nz"
    assert normalize_text("ｘ", form=None) == "ｘ"


@pytest.mark.parametrize(
    "text,kind",
    [
        ("电话13812345678谢谢", "phone"),
        ("call +86 139 1234 5678", "phone"),
        ("手机 138-1234-5678", "phone"),
        ("邮箱 zhang.san+shop@example.com.cn 收", "email"),
        ("身份证11010519491231002X", "id_card"),
        ("身份证 110105194912310021", "id_card"),
    ],
)
def test_mask_pii_kinds(text, kind):
    masked, counts = mask_pii(text)
    assert counts == {kind: 1}
    assert f"[{kind.upper()}]" in masked
    assert find_pii(text).keys() == {kind}


def test_mask_pii_leaves_lookalikes_alone():
    for text in ["订单DD1381234567", "金额 13812345678901 元", "编号 1234567890", "3.1415926"]:
        assert mask_pii(text) == (text, {})
    masked, counts = mask_pii("A:13812345678, B:a@b.cn, C:11010519491231002x")
    assert counts == {"phone": 1, "email": 1, "id_card": 1}
    assert masked == "A:[PHONE], B:[EMAIL], C:[ID_CARD]"


def test_id_card_checksum():
    assert id_card_check_char("11010519491231002") == "X"
    assert is_valid_id_card("11010519491231002X")
    assert is_valid_id_card("11010519491231002x")
    assert not is_valid_id_card("110105194912310021")
    with pytest.raises(ValueError):
        id_card_check_char("123")


def test_clean_rows_drops_with_reasons_and_masks():
    rows = [
        row("好的，电话13812345678", line=1),
        row("问题", "", line=2),
        row("问题", "  \u3000\n", line=3),
        row("问题", "好", line=4),
        row("长" * 3000, line=5),
        row("  全角，ＯＫ  ", line=6),
    ]
    kept, report, pii = clean_rows(rows, system_prompt="SYS", max_chars=2000, progress=False)
    assert report.input_count == 6 and report.kept_count == 2
    assert report.counts() == {"empty_answer": 2, "too_short": 1, "too_long": 1}
    assert [d.line for d in report.drops] == [2, 3, 4, 5]
    assert pii == {"phone": 1}
    assert kept[0]["messages"][0] == {"role": "system", "content": "SYS"}
    assert kept[0]["messages"][1]["content"] == "好的,电话[PHONE]"
    assert kept[1]["messages"][1]["content"] == "全角,OK"
    assert rows[0]["messages"][0]["content"] == "好的，电话13812345678"  # input untouched


def test_clean_rows_continues_a_report():
    report = DropReport(input_count=5)
    report.drop("f", 9, "malformed_json")
    report.close(4)
    kept, report, _ = clean_rows(
        [row("a"), row("b"), row("c", ""), row("d")], report=report, progress=False
    )
    assert report.input_count == 5 and report.kept_count == 3 and report.dropped_count == 2


def labelled(intent: str, i: int) -> dict:
    return row(f"msg {intent} {i}", json.dumps({"intent": intent}), line=i)


def test_label_counts_and_rebalance():
    rows = [labelled("a", i) for i in range(30)] + [labelled("b", i) for i in range(10)]
    rows.append(row("x", "not json"))
    assert label_counts(rows) == {"a": 30, "b": 10, "<none>": 1}
    df = label_report(rows)
    assert df.loc["a", "count"] == 30 and df.attrs["imbalance_ratio"] == 30.0
    down = rebalance(rows, mode="down", target="median", seed=1)
    assert label_counts(down) == {"a": 10, "b": 10, "<none>": 1}
    assert down == rebalance(rows, mode="down", target="median", seed=1)
    assert down != rebalance(rows, mode="down", target="median", seed=2)
    report = DropReport(input_count=len(rows))
    up = rebalance(rows, intent_of, mode="up", target="max", seed=0, report=report)
    assert label_counts(up) == {"a": 30, "b": 30, "<none>": 30}
    assert report.added_count == 49 and report.kept_count == 90
    report = DropReport(input_count=len(rows))
    rebalance(rows, mode="down", target=5, report=report)
    assert report.counts() == {"downsampled": 30}
    with pytest.raises(ValueError):
        rebalance(rows, mode="sideways")


def test_distinct_n():
    assert distinct_n(["abab"], 1) == 0.5
    assert distinct_n(["abab"], 2) == 2 / 3
    assert distinct_n(["a b a b"], 2, unit="word") == 2 / 3
    assert distinct_n([], 2) == 0.0


def test_diversity_flags_templated_data():
    rng = random.Random(0)
    products = ["耳机", "鞋子", "外套", "杯子", "键盘"]
    templated = [
        f"请问订单{rng.randint(10, 99)}的{rng.choice(products)}什么时候发货" for _ in range(300)
    ]
    chars = [chr(0x4E00 + i) for i in range(500)]  # 500 distinct CJK characters
    varied = ["".join(rng.choice(chars) for _ in range(15)) for _ in range(300)]
    t, v = diversity_report(templated), diversity_report(varied)
    assert t["over_templated"] and not v["over_templated"]
    assert t["mean_nn_jaccard"] > 0.5 > v["mean_nn_jaccard"]
    assert t["distinct_3"] < v["distinct_3"]


def test_plot_helpers_draw_what_they_are_given():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers.data import plot_diversity, plot_label_distribution

    ax = plot_label_distribution({"a": 30, "b": 10}, {"a": 10, "b": 10})
    assert sorted(p.get_width() for p in ax.patches) == [10, 10, 10, 30]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    reports = {
        "x": diversity_report(["我的订单到哪了", "退款什么时候到"]),
        "y": diversity_report(["发票怎么开", "地址填错了"]),
    }
    ax = plot_diversity(reports)
    assert len(ax.patches) == 8
    plt.close("all")
