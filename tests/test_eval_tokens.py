"""helpers.evaluation on the tiny model: teacher forcing equals training loss; probe; reports."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import evaluation as ev
from helpers.data import load_probe, load_split
from helpers.data.lossmask import IGNORE_INDEX, loss_mask
from helpers.models import load_model
from helpers.profiles import get_profile

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
TINY = get_profile("tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(TINY, path=tiny_dir)


@pytest.fixture(scope="module")
def conversations():
    rows = load_split("test")[:3]
    return [TINY.style_messages(r["messages"]) for r in rows], [r["id"] for r in rows]


def _hf_loss(model, tokenizer, conversation) -> tuple[float, int]:
    """Mean loss transformers computes with the training labels, and the label count."""
    ids, mask = loss_mask({"messages": conversation}, tokenizer, "assistant_only")
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
    return out.loss.item(), sum(mask[1:])


def test_perplexity_equals_exp_of_the_training_loss(tiny, conversations):
    model, tokenizer = tiny
    convs, ids = conversations
    scores = ev.score_tokens(model, tokenizer, convs, ids=ids, batch_size=2, progress=False)
    losses = [_hf_loss(model, tokenizer, c) for c in convs]
    for s, (loss, n) in zip(scores, losses, strict=True):
        assert s.n == n
        assert math.log(ev.perplexity(s.nll, s.n)) == pytest.approx(loss, rel=1e-4)
    weighted = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    assert math.log(ev.set_perplexity(scores)) == pytest.approx(weighted, rel=1e-4)
    assert [s.id for s in scores] == ids


def test_scores_do_not_depend_on_padding_or_batch(tiny, conversations):
    model, tokenizer = tiny
    convs, _ = conversations
    alone = ev.score_tokens(model, tokenizer, convs[:1], batch_size=1, progress=False)[0]
    batched = ev.score_tokens(model, tokenizer, convs, batch_size=3, progress=False)[0]
    assert alone.ids == batched.ids and alone.top_ids == batched.top_ids
    assert alone.probs == pytest.approx(batched.probs, abs=1e-5)
    assert alone.entropy == pytest.approx(batched.entropy, abs=1e-4)


def test_token_statistics_match_a_manual_softmax(tiny, conversations):
    model, tokenizer = tiny
    conv = conversations[0][0]
    s = ev.score_tokens(model, tokenizer, [conv], progress=False)[0]
    ids, mask = loss_mask({"messages": conv}, tokenizer, "assistant_only")
    t = mask.index(1) - 1  # the position that predicts the first answer token
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, t], -1)
    assert s.ids[0] == ids[t + 1]
    assert s.probs[0] == pytest.approx(logp[ids[t + 1]].exp().item(), rel=1e-4)
    assert s.top_ids[0] == logp.argmax().item()
    assert s.entropy[0] == pytest.approx(-(logp.exp() * logp).sum().item(), rel=1e-4)
    assert s.first_divergence == next(
        (i for i, (a, b) in enumerate(zip(s.ids, s.top_ids, strict=True)) if a != b), None
    )


def test_bad_case_table_and_rendering(tiny, conversations):
    model, tokenizer = tiny
    convs, ids = conversations
    scores = ev.score_tokens(model, tokenizer, convs, ids=ids, progress=False)
    table = ev.bad_case_table(scores, tokenizer)
    assert table["worst_p"].is_monotonic_increasing
    assert set(table["id"]) == set(ids)
    worst = min(scores, key=lambda s: min(s.probs))
    assert table.loc[0, "id"] == worst.id
    assert table.loc[0, "worst_p"] == pytest.approx(min(worst.probs))
    html = ev.render_token_scores(worst, tokenizer)
    assert html.count("<span") >= 1 and "perplexity" in html
    assert ("▼" in html) == (worst.first_divergence is not None)  # random model: diverges
    assert "hsl(" in ev.legend_html()


def test_probe_report_on_the_tiny_model(tiny):
    model, tokenizer = tiny
    rows = load_probe()[:6]
    report = ev.probe_report(model, tokenizer, rows, progress=False)
    assert [a["id"] for a in report["answers"]] == [r["id"] for r in rows]
    hits = [
        ev.probe_hit(a["reply"], r["answers"]) for a, r in zip(report["answers"], rows, strict=True)
    ]
    assert [a["hit"] for a in report["answers"]] == hits
    assert report["accuracy"] == sum(hits) / len(hits)
    assert all("\n" not in a["reply"] for a in report["answers"])
    assert report["decoding"]["do_sample"] is False


def _greedy(model, tokenizer, inputs: dict, n: int) -> str:
    """Reference: one unbatched greedy generation, new tokens decoded."""
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_generate_batch_continues_plain_text_and_chats(tiny):
    model, tokenizer = tiny
    texts = ["问：一年有几个月？\n答：", "Q: What is 5 + 8?\nA:"]  # different lengths: padded
    chat = [[{"role": "user", "content": "你好"}]]
    got = ev.generate_batch(model, tokenizer, texts, 6, progress=False)
    assert got == [_greedy(model, tokenizer, tokenizer(t, return_tensors="pt"), 6) for t in texts]
    inputs = tokenizer.apply_chat_template(
        chat[0], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert ev.generate_batch(model, tokenizer, chat, 6, progress=False) == [
        _greedy(model, tokenizer, inputs, 6)
    ]


def test_behaviour_report_includes_rouge_and_is_reused_when_it_matches(tiny, tmp_path):
    model, tokenizer = tiny
    report = ev.behaviour_report(model, tokenizer, TINY, progress=False)
    assert 0.0 <= report["metrics"]["self_cognition_rouge_l"] <= 1.0
    path = tmp_path / "after_tiny.json"
    path.write_text(json.dumps(report, ensure_ascii=False))
    saved, source = ev.stored_or_measured(path, model, tokenizer, TINY, progress=False)
    assert source.startswith("saved") and saved == report
    stale = dict(report, answers=report["answers"][:-1])  # a different evaluation set
    path.write_text(json.dumps(stale, ensure_ascii=False))
    fresh, source = ev.stored_or_measured(path, model, tokenizer, TINY, progress=False)
    assert source == "measured now" and len(fresh["answers"]) == len(report["answers"])


def test_generate_batch_is_greedy_whatever_sampling_defaults_the_model_ships(tiny_dir):
    """Qwen2.5-Instruct ships repetition_penalty 1.05-1.1 and sampling in generation_config."""
    model, tokenizer = load_model(TINY, path=tiny_dir)
    text = ["订单 订单 订单 订单"]  # repeated tokens: where a repetition penalty bites
    plain = ev.generate_batch(model, tokenizer, text, 12, progress=False)
    model.generation_config.update(
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=5.0
    )
    assert ev.generate_batch(model, tokenizer, text, 12, progress=False) == plain
    with torch.no_grad():  # what transformers does when only do_sample=False is passed
        inputs = tokenizer(text, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    penalised = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert penalised != plain[0], "the model's repetition penalty must change this answer"
