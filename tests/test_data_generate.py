"""The generated course data: deterministic bytes, checksums, schema, and the raw MANIFEST."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from helpers.data import (
    ASSISTANT_NAME,
    ASSISTANT_NAME_EN,
    ASSISTANT_TEAM,
    FIELDS,
    INTENTS,
    SENTIMENTS,
    SYSTEM_PROMPT,
    URGENCIES,
    ChecksumError,
    data_dir,
    find_overlap,
    label_counts,
    load_manifest,
    load_probe,
    load_replay,
    load_self_cognition,
    load_split,
    raw_files,
    run_pipeline,
    score_answers,
    validate_messages,
    verify_checksums,
)
from helpers.data.dedup import exact_key

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("course_generate", ROOT / "data" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checksums_match():
    names = verify_checksums()
    assert "main/train.jsonl" in names and "raw/MANIFEST.json" in names
    # Listed, so test_generator_is_deterministic covers the replay and probe bytes too.
    assert "general_replay.jsonl" in names and "probe_general.jsonl" in names


def test_checksum_mismatch_names_file_and_fix(tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data_dir(), copy)
    with open(copy / "main" / "val.jsonl", "a", encoding="utf-8") as f:
        f.write("\n")
    with pytest.raises(ChecksumError, match=r"data/main/val\.jsonl.*python data/generate\.py"):
        verify_checksums(copy)
    (copy / "probe_general.jsonl").unlink()
    with pytest.raises(ChecksumError, match=r"val\.jsonl differs.*probe_general\.jsonl is missing"):
        verify_checksums(copy)


def test_generator_is_deterministic(tmp_path):
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run(
        [sys.executable, str(ROOT / "data" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        env=env,
        capture_output=True,
    )
    assert (tmp_path / "SHA256SUMS").read_bytes() == (data_dir() / "SHA256SUMS").read_bytes()
    verify_checksums(tmp_path)


@pytest.fixture(scope="module")
def pipeline():
    return run_pipeline(
        raw_files(), test_rows=load_split("test"), system_prompt=SYSTEM_PROMPT, progress=False
    )


def test_raw_pipeline_finds_every_injected_problem(pipeline):
    manifest = load_manifest()
    report = pipeline.report
    assert report.input_count == manifest["input_rows"]
    assert report.counts() == dict(Counter(manifest["injected"]).most_common())
    assert len(pipeline.rows) == manifest["expected_kept"] == report.kept_count
    assert dict(pipeline.pii) == manifest["pii"]
    kinds = Counter(p.kind for p in pipeline.duplicates)
    assert kinds == {
        "exact": manifest["injected"]["exact_duplicate"],
        "near": manifest["injected"]["near_duplicate"],
    }
    leaks = Counter(o.kind for o in pipeline.overlaps)
    assert leaks == manifest["test_leaks"]
    for name in manifest["bom_files"]:
        assert any(name in w and "BOM" in w for w in report.warnings)
    imbalance = manifest["imbalance"]
    counts = label_counts(pipeline.rows)
    assert counts[imbalance["intent"]] == 250 + imbalance["extra_rows"]
    assert all(
        r["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT} for r in pipeline.rows
    )
    text = "\n".join(m["content"] for r in pipeline.rows for m in r["messages"])
    assert "[PHONE]" in text and not re.search(r"(?<!\d)1[3-9]\d{9}(?!\d)", text)


def test_main_dataset_schema_and_derivability():
    gen = _generator()
    splits = {s: load_split(s) for s in ("train", "val", "test")}
    assert {s: len(r) for s, r in splits.items()} == {"train": 2000, "val": 200, "test": 200}
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(ids) == len(set(ids))
    for rows in splits.values():
        for r in rows:
            system, user, answer = (m["content"] for m in r["messages"])
            assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
            assert system == SYSTEM_PROMPT
            label = json.loads(answer)
            assert list(label) == list(FIELDS)
            assert answer == json.dumps(label, ensure_ascii=False, separators=(",", ":"))
            assert label["intent"] in INTENTS
            assert label["sentiment"] in SENTIMENTS and label["urgency"] in URGENCIES
            assert label["sentiment"] == gen.rule_sentiment(user)
            assert label["urgency"] == gen.rule_urgency(user)
            if label["order_id"] is not None:
                assert re.fullmatch(r"DD\d{10}", label["order_id"])
                assert label["order_id"].lower() in user.lower()
            if label["product"] is not None:
                assert label["product"] in user
            assert label["amount"] is None or isinstance(label["amount"], int | float)
    train_templates = {r["meta"]["template"] for r in splits["train"] + splits["val"]}
    unseen = [r for r in splits["test"] if not r["meta"]["seen_template"]]
    assert len(unseen) == 80
    assert all(r["meta"]["template"] not in train_templates for r in unseen)
    assert Counter(
        json.loads(r["messages"][2]["content"])["intent"] for r in splits["train"]
    ) == dict.fromkeys(INTENTS, 250)
    assert find_overlap(splits["train"], splits["test"], progress=False) == []


def test_chinese_numerals():
    gen = _generator()
    assert [gen.zh_number(n) for n in (5, 10, 15, 350, 1005, 1200, 20000)] == [
        "五",
        "十",
        "十五",
        "三百五十",
        "一千零五",
        "一千二百",
        "二万",
    ]
    assert gen.zh_number(200, liang=True) == "两百"


def test_self_cognition_is_consistent():
    rows = load_self_cognition()
    assert len(rows) == 100
    questions = [r["messages"][0]["content"] for r in rows]
    assert len(set(questions)) == 100
    for r in rows:
        answer = r["messages"][1]["content"]
        assert ASSISTANT_NAME in answer or ASSISTANT_NAME_EN in answer
        assert ASSISTANT_TEAM in answer
    assert Counter(r["meta"]["split"] for r in rows) == {"train": 80, "eval": 20}
    assert {r["meta"]["lang"] for r in rows} == {"zh", "en"}


def test_probe_answers_are_checkable():
    rows = load_probe()
    assert 90 <= len(rows) <= 110
    for r in rows:
        assert r["answers"] and all(isinstance(a, str) and a for a in r["answers"])
        if r["category"] == "arithmetic":
            a, op, b = re.findall(r"(\d+) ([-+×*]) (\d+)", r["question"])[0]
            value = {"+": int(a) + int(b), "-": int(a) - int(b)}.get(op, int(a) * int(b))
            assert r["answers"] == [str(value)]


def _user_rows(questions: list[str]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}]} for q in questions]


def _replay_value(row: dict, facts: dict[str, str]) -> str:
    """What a replay answer must contain, recomputed from the question (facts: knowledge)."""
    q = row["messages"][0]["content"]
    if row["category"] == "arithmetic":
        a, op, b = re.fullmatch(r"(?:What is )?(\d+) ([-+×*]) (\d+)(?: 等于多少？|\?)", q).groups()
        return str({"+": int(a) + int(b), "-": int(a) - int(b)}.get(op, int(a) * int(b)))
    if row["category"] == "unit_conversion":
        factors = {"公里": 1000, "千克": 1000, "小时": 60, "分钟": 60, "米": 100, "天": 24}
        factors |= {"吨": 1000, "升": 1000, "kilometers": 1000, "hours": 60}
        x, unit = re.search(rf"(\d+) ({'|'.join(factors)})", q).groups()
        return str(int(x) * factors[unit])
    return facts[q]


def test_replay_rows_are_valid_conversations():
    rows = load_replay()
    facts = {q: fact for q, fact, _, _ in _generator().REPLAY_KNOWLEDGE}
    assert 100 <= len(rows) <= 140
    assert [r["id"] for r in rows] == [f"replay-{i:03d}" for i in range(1, len(rows) + 1)]
    counts = Counter((r["category"], r["lang"]) for r in rows)
    for category in ("knowledge", "arithmetic", "unit_conversion"):
        assert counts[category, "zh"] >= 20 and counts[category, "en"] >= 5, counts
    assert sum(counts.values()) == len(rows)
    assert len({exact_key(r["messages"][0]["content"]) for r in rows}) == len(rows)
    for r in rows:
        validate_messages(r["messages"])
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in r["messages"])
        question, answer = (m["content"] for m in r["messages"])
        value = _replay_value(r, facts)
        if value.isdigit():  # the number itself, not a longer number that contains it
            assert re.search(rf"(?<!\d){value}(?!\d)", answer), (r["id"], answer, value)
        else:
            assert value in answer, (r["id"], answer, value)
        if r["lang"] == "zh":
            assert re.search(r"[\u4e00-\u9fff]", question + answer), r["id"]
        else:
            assert question.isascii() and answer.isascii(), r["id"]


def test_replay_file_matches_its_builder():
    gen = _generator()
    rows = gen.build_replay(gen.random.Random(gen.SEED + 3))
    assert rows == gen.build_replay(gen.random.Random(gen.SEED + 3)) == load_replay()
    assert gen.build_probe(gen.random.Random(gen.SEED + 2)) == load_probe()


def test_replay_never_asks_a_probe_question():
    replay = load_replay()
    probe_questions = [r["question"] for r in load_probe()]
    probe_keys = {exact_key(q) for q in probe_questions}
    for r in replay:
        q = r["messages"][0]["content"]
        assert q not in probe_questions and exact_key(q) not in probe_keys, q
    overlaps = find_overlap(replay, _user_rows(probe_questions), progress=False)
    assert not overlaps, [
        (replay[o.train]["messages"][0]["content"], probe_questions[o.test], o.kind)
        for o in overlaps
    ]
    # The check has teeth: "19 公里等于多少米？" is a near overlap of the probe's "9 公里...".
    twins = ["1" + q for q in probe_questions if re.match(r"\d ", q)]
    found = find_overlap(_user_rows(twins), _user_rows(probe_questions), progress=False)
    assert twins and {o.kind for o in found} == {"near"} and len(found) == len(twins)


def test_score_answers():
    ref = load_split("val")[0]["messages"][2]["content"]
    label = json.loads(ref)
    wrong = json.dumps(dict(label, urgency="high" if label["urgency"] != "high" else "low"))
    scores = score_answers([ref, "not json", wrong], [ref, ref, ref])
    assert scores["json_valid"] == pytest.approx(2 / 3)
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["field_intent"] == pytest.approx(2 / 3)
    assert scores["field_urgency"] == pytest.approx(1 / 3)


def test_strict_pipeline_stops_at_the_first_problem():
    from helpers.data import DataError

    with pytest.raises(DataError) as exc:
        run_pipeline(raw_files(), strict=True, progress=False)
    assert exc.value.file.endswith("alpaca_export.json") and exc.value.line is not None
