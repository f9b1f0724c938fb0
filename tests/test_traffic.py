"""The two days of replay traffic: deterministic bytes, schema, the day-2 shift, no leaks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from helpers.data import FIELDS, INTENTS, SYSTEM_PROMPT, find_overlap, load_split, verify_checksums
from helpers.data.course import parse_answer
from helpers.monitor.security import is_injection, pii_kinds

ROOT = Path(__file__).resolve().parents[1]
TRAFFIC = ROOT / "data" / "traffic"


def load(day: int) -> list[dict]:
    with open(TRAFFIC / f"day{day}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def user(row: dict) -> str:
    return row["messages"][-1]["content"]


def test_regeneration_is_byte_identical_and_checksummed(tmp_path):
    assert verify_checksums(TRAFFIC) == ["day1.jsonl", "day2.jsonl"]
    subprocess.run(
        [sys.executable, str(ROOT / "data" / "traffic.py"), "--out", str(tmp_path)],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    for name in ("day1.jsonl", "day2.jsonl", "SHA256SUMS"):
        assert (tmp_path / name).read_bytes() == (TRAFFIC / name).read_bytes(), name


@pytest.mark.parametrize("day", [1, 2])
def test_schema_clock_and_truth(day):
    rows = load(day)
    assert 100 <= len(rows) <= 150
    assert len({r["id"] for r in rows}) == len(rows)
    ts = [r["replay_ts"] for r in rows]
    start = 1748793600 + (day - 1) * 86400
    assert ts == sorted(ts) and start <= ts[0] and ts[-1] < start + 86400
    hours = Counter(int((t - start) // 3600) for t in ts)
    assert sum(hours[h] for h in range(9, 23)) > 3 * sum(hours[h] for h in range(0, 6))
    for r in rows:
        assert [m["role"] for m in r["messages"]] == ["system", "user"]
        assert r["messages"][0]["content"] == SYSTEM_PROMPT
        assert r["client"]
        if r["truth"] is None:
            assert r["kind"] == "injection"
            continue
        answer = parse_answer(r["truth"])
        assert list(answer) == list(FIELDS) and answer["intent"] in INTENTS
        if answer["product"] is not None:
            assert answer["product"] in user(r), r["id"]


def test_day2_shifts_and_day1_looks_like_training():
    day1, day2 = load(1), load(2)
    assert {r["kind"] for r in day1} == {"in_distribution"}
    kinds = Counter(r["kind"] for r in day2)
    assert set(kinds) == {
        "in_distribution",
        "heldout_phrasing",
        "new_product",
        "free_form",
        "multi_request",
        "injection",
        "pii",
    }
    assert min(kinds.values()) >= 0.08 * len(day2)
    mean_len = [sum(len(user(r)) for r in rows) / len(rows) for rows in (day1, day2)]
    assert mean_len[1] > 1.15 * mean_len[0]
    multi = [len(user(r)) for r in day2 if r["kind"] == "multi_request"]
    assert min(multi) > mean_len[0]


@pytest.mark.parametrize("day", [1, 2])
def test_security_checks_see_exactly_the_attacks_and_pii(day):
    for r in load(day):
        assert is_injection(user(r)) == (r["kind"] == "injection"), user(r)
        assert bool(pii_kinds(user(r))) == (r["kind"] == "pii"), user(r)


def test_no_message_repeats_a_train_or_test_row():
    day2 = load(2)
    seen = load_split("train") + load_split("test")
    overlaps = find_overlap(day2 + load(1), seen, progress=False)
    assert [o for o in overlaps if o.kind == "exact"] == []
