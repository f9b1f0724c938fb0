"""Exact and near-duplicate removal, train/test overlap, and the ledger they keep."""

from __future__ import annotations

import random

from helpers.data import (
    DropReport,
    decontaminate,
    deduplicate,
    exact_dedup,
    find_overlap,
    near_dedup,
)
from helpers.data.dedup import jaccard, make_lsh, shingles


def row(user: str, line: int, answer: str = "ok") -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        "source": {"file": "f.jsonl", "line": line},
    }


BASE = [
    "我的订单DD1234567890到哪了，好几天没有更新物流信息了",
    "买的蓝牙耳机有质量问题，申请退款三百五十元",
    "收货地址填错了，麻烦帮我改成杭州市西湖区",
    "请问这款空气炸锅支持七天无理由退货吗",
    "订单DD5550001111需要开增值税专用发票，抬头写公司名称",
]


def test_exact_dedup_ignores_case_space_and_punctuation():
    rows = [row(t, i) for i, t in enumerate(BASE, 1)]
    rows += [
        row(" 我的订单dd1234567890 到哪了,好几天没有更新物流信息了!!", 6),
        row(BASE[1], 7, answer="different answer"),
    ]
    kept, pairs = exact_dedup(rows, progress=False)
    assert len(kept) == 5
    assert [(p.dropped, p.kept, p.kind) for p in pairs] == [(5, 0, "exact"), (6, 1, "exact")]
    assert pairs[0].kept_where == "f.jsonl:1" and pairs[0].dropped_where == "f.jsonl:6"


def test_near_dedup_catches_one_char_edits_only():
    rows = [row(t, i) for i, t in enumerate(BASE, 1)]
    rows += [
        row(BASE[0].replace("好几天", "好几个"), 6),  # substitution
        row(BASE[2].replace("麻烦", "麻烦你"), 7),  # insertion
        row(BASE[3].replace("这款", "款"), 8),
    ]  # deletion
    report = DropReport(input_count=len(rows))
    kept, pairs = near_dedup(rows, report=report, progress=False)
    assert [(p.dropped, p.kept) for p in pairs] == [(5, 0), (6, 2), (7, 3)]
    assert all(0.7 <= p.similarity < 1 for p in pairs)
    assert report.counts() == {"near_duplicate": 3}
    assert report.drops[0].duplicate_of == "f.jsonl:1"
    assert len(kept) == 5 and report.kept_count == 5


def test_dedup_combined_indices_refer_to_input():
    rows = [row(t, i) for i, t in enumerate(BASE, 1)]
    rows.insert(2, row(BASE[0] + "。", 10))  # exact after normalisation
    rows.append(row(BASE[4].replace("名称", "名字"), 11))  # near
    kept, pairs = deduplicate(rows, progress=False)
    assert {(p.dropped, p.kept, p.kind) for p in pairs} == {(2, 0, "exact"), (6, 5, "near")}
    assert [r["source"]["line"] for r in kept] == [1, 2, 3, 4, 5]


def test_distinct_rows_survive_and_are_deterministic():
    rng = random.Random(0)
    alphabet = [chr(0x4E00 + i) for i in range(3000)]
    texts = ["".join(rng.choice(alphabet) for _ in range(30)) for _ in range(500)]
    rows = [row(t, i) for i, t in enumerate(texts)]
    kept, pairs = deduplicate(rows, progress=False)
    assert len(kept) == 500 and pairs == []
    again, _ = deduplicate(rows, progress=False)
    assert again == kept


def test_lsh_recall_at_threshold():
    """Candidates must cover pairs at the threshold (datasketch's default S-curve would not)."""
    rng = random.Random(1)
    alphabet = [chr(0x4E00 + i) for i in range(3000)]
    found = 0
    for _k in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(40))
        edited = text[:10] + "的" + text[11:20] + "了" + text[21:]  # two substitutions
        assert jaccard(shingles(text), shingles(edited)) >= 0.7
        rows = [row(text, 1), row(edited, 2)]
        found += len(near_dedup(rows, progress=False)[1])
    assert found >= 195
    assert make_lsh(0.7).b > 14  # lower internal threshold -> more bands


def test_find_overlap_and_decontaminate():
    train = [row(t, i) for i, t in enumerate(BASE, 1)]
    test = [
        row("完全不同的一句话，和训练集没有关系", 1),
        row(BASE[1], 2),
        row(BASE[4].replace("名称", "名字"), 3),
    ]
    overlaps = find_overlap(train, test, progress=False)
    assert [(o.train, o.test, o.kind) for o in overlaps] == [(1, 1, "exact"), (4, 2, "near")]
    report = DropReport(input_count=len(train))
    kept, _ = decontaminate(train, test, report=report, progress=False)
    assert len(kept) == 3 and report.counts() == {"test_overlap": 2}
    assert report.kept_count == 3


def test_custom_key_compares_answers_too():
    rows = [row(BASE[0], 1, "A"), row(BASE[0], 2, "B")]
    kept, _ = deduplicate(rows, progress=False)
    assert len(kept) == 1

    def both(r: dict) -> str:
        return r["messages"][0]["content"] + "\n" + r["messages"][1]["content"]

    kept, _ = exact_dedup(rows, key=both, progress=False)
    assert len(kept) == 2
