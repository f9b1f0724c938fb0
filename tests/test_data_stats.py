"""helpers.data.stats: length statistics with the chat template applied, loss-token shares, plot."""

import copy
import re

import pytest

from helpers.data.lossmask import loss_mask, trl_labels_batch
from helpers.data.stats import (
    LengthReport,
    length_report,
    length_stats,
    plot_length_histogram,
    token_lengths,
)
from helpers.models import CHATML_TEMPLATE


def _chat(user: str, reply: str, system: str | None = None) -> dict:
    """A single-turn sample."""
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return {"messages": ([{"role": "system", "content": system}] if system else []) + turns}


SAMPLES = [
    _chat("你好", "您好！"),
    _chat("Where is order 42?", "It shipped today.", system="You are a support agent."),
    _chat("退款要多久？" * 5, "一般 3 到 5 个工作日到账。" * 4),
    {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "bye 👋"},
        ]
    },
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tokenizer, model) of a tiny Qwen2 built for this module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.models import build_tiny_model

    words = ["订单", "退款", "您好", "工作日", "到账", "order", "shipped", "support", "agent"]
    texts = [f"{w} {i} {words[(i * 7) % len(words)]}！" for i, w in enumerate(words * 30)]
    texts += [m["content"] for s in SAMPLES for m in s["messages"]]
    path = build_tiny_model(tmp_path_factory.mktemp("stats"), texts=texts)
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)


def test_length_stats_by_hand():
    stats = length_stats([10, 20, 30, 40, 50], max_length=35)
    assert stats["count"] == 5 and stats["mean"] == 30 and stats["max"] == 50
    assert (stats["p50"], stats["p90"], stats["p95"]) == (30, 46, 48)
    assert stats["p99"] == pytest.approx(49.6)
    assert stats["truncated_count"] == 2 and stats["truncated_share"] == 0.4
    assert stats["tokens_cut"] == 5 + 15 and stats["tokens_cut_share"] == pytest.approx(20 / 150)


def test_length_equal_to_max_length_is_not_truncated():
    stats = length_stats([7, 8, 8], max_length=8)
    assert stats["truncated_count"] == 0 and stats["tokens_cut"] == 0
    with pytest.raises(ValueError, match="empty"):
        length_stats([], max_length=8)


def test_token_lengths_match_trl_tokenization(tiny):
    tok, _ = tiny
    lengths = token_lengths(SAMPLES, tok, progress=True)
    trl = trl_labels_batch(SAMPLES, tok, "all", max_length=None)
    assert lengths == [len(labels) for labels in trl]
    assert lengths[2] > lengths[0]


def test_length_report_shares_equal_mask_sums(tiny):
    tok = tiny[0]
    lengths = token_lengths(SAMPLES, tok)
    report = length_report(SAMPLES, tok, max_length=lengths[2] - 1)
    assert isinstance(report, LengthReport)
    expected = length_stats(lengths, lengths[2] - 1)
    assert {k: v for k, v in report.to_dict().items() if k in expected} == expected
    assert report.truncated_count == 1 and report.tokens_cut == 1
    total = sum(lengths)
    assistant = sum(sum(loss_mask(s, tok, "assistant_only")[1]) for s in SAMPLES)
    last = sum(sum(loss_mask(s, tok, "last_turn")[1]) for s in SAMPLES)
    assert report.assistant_loss_share == pytest.approx(assistant / total)
    assert report.last_turn_loss_share == pytest.approx(last / total)
    # Single-turn: last_turn = the assistant span + the "\n" after <|im_end|>; multi-turn: fewer.
    single = [sum(loss_mask(s, tok, "assistant_only")[1]) + 1 for s in SAMPLES[:3]]
    assert single == [sum(loss_mask(s, tok, "last_turn")[1]) for s in SAMPLES[:3]]
    assert 0 < report.assistant_loss_share < 1
    text = str(report)
    assert f"max_length={lengths[2] - 1}: 1 truncated (25.0%)" in text


def test_length_report_without_generation_markers(tiny):
    plain = copy.deepcopy(tiny[0])
    plain.chat_template = re.sub(r"\{% (end)?generation %\}", "", CHATML_TEMPLATE)
    report = length_report(SAMPLES, plain, max_length=4096)
    assert report.assistant_loss_share is None and report.last_turn_loss_share > 0
    assert report.truncated_share == 0 and "assistant_only n/a" in str(report)


def test_length_report_names_bad_sample(tiny):
    bad = SAMPLES[:1] + [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(ValueError, match="sample 1: .*no assistant message"):
        length_report(bad, tiny[0], max_length=64)


def test_plot_has_max_length_line():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    ax = plot_length_histogram([10, 20, 30, 40, 50], max_length=35)
    assert isinstance(ax, Axes)
    assert any(list(line.get_xdata()) == [35, 35] for line in ax.get_lines())
    assert "40.0% of 5 samples" in ax.get_title()
    _, given = plt.subplots()
    assert plot_length_histogram([5, 6], max_length=8, ax=given) is given
    assert "0.0%" in given.get_title()
    plt.close("all")
