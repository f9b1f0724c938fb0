"""helpers.evaluation arithmetic, comparison and results file, against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from helpers import evaluation as ev
from helpers.data import load_probe, load_self_cognition, load_split
from helpers.evaluation.forgetting import FEW_SHOT


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ("abc", "abc", 1.0),
        ("我是小调", "我叫小调", 0.75),  # LCS 我小调: P = R = 3/4
        ("ab", "ba", 0.5),  # LCS 1: P = R = 1/2
        ("abcd", "ab", 2 * 0.5 * 1.0 / 1.5),  # P = 2/4, R = 2/2
        ("a b c", "abc", 1.0),  # whitespace ignored
        ("", "abc", 0.0),  # empty generation
        ("xyz", "abc", 0.0),
    ],
)
def test_rouge_l_chars_matches_hand_computed_values(pred, ref, expected):
    assert ev.rouge_l_chars(pred, ref) == pytest.approx(expected)


def test_perplexity_is_exp_of_mean_nll():
    assert ev.perplexity(2 * math.log(2), 2) == pytest.approx(2.0)
    assert ev.perplexity(0.0, 5) == 1.0
    assert math.isnan(ev.perplexity(0.0, 0))


@pytest.mark.parametrize(
    ("reply", "answers", "hit"),
    [
        ("一年有12个月", ["12", "十二"], True),
        ("一年有十二个月", ["12", "十二"], True),
        ("120", ["12"], False),  # part of a longer number
        ("3.12", ["12"], False),  # a decimal is not 12
        ("12.", ["12"], True),  # sentence end
        ("The answer is PARIS", ["Paris"], True),
        ("", ["Paris"], False),
        ("0℃", ["0℃", "0度"], True),
    ],
)
def test_probe_hit(reply, answers, hit):
    assert ev.probe_hit(reply, answers) is hit


def test_row_scores_on_valid_malformed_and_empty_answers():
    ref = load_split("test")[0]["messages"][-1]["content"]
    assert ev.row_scores(ref, ref)["field_accuracy"] == 1.0
    assert ev.row_scores(ref, ref)["exact_match"] == 1.0
    one_wrong = json.loads(ref) | {"urgency": "nonsense"}
    scores = ev.row_scores(json.dumps(one_wrong, ensure_ascii=False), ref)
    assert scores["field_accuracy"] == pytest.approx(5 / 6)
    assert scores["exact_match"] == 0.0 and scores["json_valid"] == 1.0
    for bad in ('{"intent": "refund",', "", "[1, 2]", "我不知道"):
        assert ev.row_scores(bad, ref)["json_valid"] == 0.0
        assert ev.row_scores(bad, ref)["field_accuracy"] == 0.0


def test_auroc_hand_computed():
    assert ev.auroc([0.9, 0.8, 0.3, 0.1], [True, True, False, False]) == 1.0
    assert ev.auroc([0.1, 0.3, 0.8, 0.9], [True, True, False, False]) == 0.0
    # pairs: .9>.6 .9>.2 .4<.6 .4>.2 -> 3 of 4
    assert ev.auroc([0.9, 0.4, 0.6, 0.2], [True, True, False, False]) == 0.75
    assert ev.auroc([0.5, 0.5], [True, False]) == 0.5  # a tie counts half
    assert ev.auroc([0.5, 0.7], [True, True]) is None


def test_token_scores_properties_by_hand():
    s = ev.TokenScores("x", [5, 6, 7], [0.5, 0.25, 1.0], [5, 9, 7], [0.5, 0.6, 1.0], [1, 2, 0])
    assert s.nll == pytest.approx(3 * math.log(2))
    assert s.mean_logprob == pytest.approx(-math.log(2))
    assert s.mean_entropy == pytest.approx(1.0)
    assert s.first_divergence == 1 and s.worst == 1
    assert ev.set_perplexity([s]) == pytest.approx(2.0)
    same = ev.TokenScores("y", [5], [1.0], [5], [1.0], [0.0])
    assert same.first_divergence is None
    # token-weighted over the set: (3 ln 2 + 0) / 4 tokens
    assert ev.set_perplexity([s, same]) == pytest.approx(math.exp(3 * math.log(2) / 4))


def test_fewshot_prompt_layout_and_examples_are_not_probe_questions():
    assert ev.fewshot_prompt("中国最长的河流是哪条？", "zh").endswith(
        "问：中国最长的河流是哪条？\n答："
    )
    assert ev.fewshot_prompt("x?", "zh").startswith("问：一小时有多少分钟？\n答：60\n\n")
    assert ev.fewshot_prompt("What is 2 + 2?", "en").endswith("\n\nQ: What is 2 + 2?\nA:")
    assert "\nA: London\n\n" in ev.fewshot_prompt("x?", "en")
    probe = {r["question"] for r in load_probe()}
    assert not probe & {q for shots in FEW_SHOT.values() for q, _ in shots}


def _report(acc: float, cats: dict, hits: list[bool]) -> dict:
    answers = [{"id": f"p{i}", "reply": "r", "hit": h} for i, h in enumerate(hits)]
    return {"accuracy": acc, "by_category": cats, "answers": answers}


def test_forgetting_table_flags_drops_beyond_the_threshold():
    before = _report(0.5, {"a": 0.6, "b": 0.4}, [])
    after = _report(0.42, {"a": 0.6, "b": 0.3}, [])
    table = ev.forgetting_table(before, after, threshold=0.05)
    assert list(table.index) == ["a", "b", "overall"]
    assert table.loc["b", "delta"] == pytest.approx(-0.1)
    assert table["verdict"].to_dict() == {"a": "ok", "b": "forgot", "overall": "forgot"}
    at_threshold = ev.forgetting_table(before, _report(0.45, {"a": 0.6, "b": 0.35}, []), 0.05)
    assert at_threshold.loc["b", "verdict"] == "ok"  # exactly -threshold is tolerated
    named = ev.forgetting_table(before, after, 0.05, after_name="replay")
    assert list(named.columns[:2]) == ["base", "replay"]


def test_forgetting_cases_classifies_each_question():
    rows = [{"id": f"p{i}", "category": "c", "question": "q", "answers": ["a"]} for i in range(4)]
    before = _report(0.5, {}, [True, True, False, False])
    after = _report(0.5, {}, [True, False, False, True])
    cases = ev.forgetting_cases(before, after, rows)
    assert cases["kind"].tolist() == ["kept", "trained away", "never knew", "learned"]
    after["answers"][2]["id"] = "other"
    with pytest.raises(ValueError, match="out of order"):
        ev.forgetting_cases(before, after, rows)


def _answers(pairs):
    return [{"id": i, "set": s, "answer": a} for s, i, a in pairs]


def test_side_by_side_scores_and_labels_changes():
    t0, t1 = load_split("test")[:2]
    cog = next(r for r in load_self_cognition() if r["meta"]["split"] == "eval")
    ref0, ref1 = t0["messages"][-1]["content"], t1["messages"][-1]["content"]
    ref_cog = cog["messages"][-1]["content"]
    base = _answers(
        [("main_test", t0["id"], "nope"), ("main_test", t1["id"], ref1)]
        + [("self_cognition", cog["id"], "I am a language model.")]
    )
    tuned = _answers(
        [("main_test", t0["id"], ref0), ("main_test", t1["id"], "")]
        + [("self_cognition", cog["id"], ref_cog)]
    )
    cases = ev.side_by_side(base, tuned).set_index("id")
    assert cases.loc[t0["id"], ["base_score", "tuned_score", "change"]].tolist() == [
        0.0,
        1.0,
        "improved",
    ]
    assert cases.loc[t1["id"], "change"] == "regressed"
    assert cases.loc[cog["id"], "tuned_score"] == 1.0  # ROUGE-L of the reference itself
    assert cases.loc[t0["id"], "prompt"] == t0["messages"][-2]["content"]
    with pytest.raises(ValueError, match="no fine-tuned answer"):
        ev.side_by_side(base, tuned[:1])


def test_diff_html_marks_only_the_differences_and_escapes():
    old, new = ev.diff_html("<ab>c", "<ab>d")
    assert old.startswith("&lt;ab&gt;") and new.startswith("&lt;ab&gt;")
    assert 'line-through">c</span>' in old and '"background:#bfe8c0">d</span>' in new
    assert ev.diff_html("same", "same") == ("same", "same")


def test_case_browser_filters_by_change():
    t0, t1 = load_split("test")[:2]
    ref1 = t1["messages"][-1]["content"]
    base = _answers([("main_test", t0["id"], "x"), ("main_test", t1["id"], ref1)])
    tuned = _answers([("main_test", t0["id"], t0["messages"][-1]["content"])])
    tuned += _answers([("main_test", t1["id"], "y")])
    cases = ev.side_by_side(base, tuned)
    box = ev.case_browser(cases)
    kind, index = box.children[0].children
    view = box.children[1]
    assert t0["id"] in view.value  # "all": the first case
    kind.value = "regressed"
    assert t1["id"] in view.value and t0["id"] not in view.value
    assert index.max == 0
    assert set(kind.options) == {"all", "improved", "regressed"}


def test_results_file_start_record_and_frame(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run notebook 04"):
        ev.load_results(ev.results_path("tiny"))
    path = ev.start_results("tiny", decoding=ev.DECODING)
    assert path == tmp_path / "eval" / "results_tiny.json"
    ev.record_variant(path, "base", {"json_valid": 0.0, "perplexity": 9.5})
    ev.record_variant(path, "fine-tuned", {"json_valid": 0.9, "perplexity": 1.5}, steps=40)
    ev.record_variant(path, "base", {"json_valid": 0.1, "perplexity": 9.0})  # replaces
    frame = ev.results_frame(path)
    assert frame.loc["base", "json_valid"] == 0.1
    assert list(frame.index) == ["base", "fine-tuned"]
    saved = ev.load_results(path)
    assert saved["variants"]["fine-tuned"]["steps"] == 40 and saved["decoding"] == ev.DECODING
    with pytest.raises(ValueError, match="numbers"):
        ev.record_variant(path, "bad", {"perplexity": float("nan")})
    with pytest.raises(ValueError, match="numbers"):
        ev.record_variant(path, "bad", {"auroc": None})
    ev.start_results("tiny")  # a new run starts a fresh file
    assert ev.load_results(path)["variants"] == {}
