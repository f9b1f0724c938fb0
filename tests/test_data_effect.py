"""Balancing variants have the intended mixes; intents are scored by teacher-forced likelihood."""

import json
from collections import Counter

import pytest

from helpers.data import INTENTS, intent_of, label_counts, load_split
from helpers.data.effect import balance_variants, intent_predictions, per_intent_recall, with_intent


@pytest.fixture(scope="module")
def skewed():
    rows = load_split("train")
    refund = [r for r in rows if intent_of(r) == "refund"][:60]
    invoice = [r for r in rows if intent_of(r) == "invoice"][:20]
    return refund + invoice


def test_variants_balance_by_their_own_means(skewed):
    v = balance_variants(skewed, seed=0)
    assert label_counts(v["none"]) == Counter(refund=60, invoice=20)
    assert label_counts(v["down"]) == Counter(refund=20, invoice=20)
    assert label_counts(v["up"]) == Counter(refund=60, invoice=60)
    weighted = label_counts(v["weight"])
    assert sum(weighted.values()) == 80 and abs(weighted["refund"] - 40) < 15  # ~half each
    assert balance_variants(skewed, seed=0)["weight"] == v["weight"]  # seeded


def test_with_intent_changes_only_the_intent():
    row = load_split("val")[0]
    msgs = with_intent(row, "invoice")
    old, new = (json.loads(m[-1]["content"]) for m in (row["messages"], msgs))
    assert new["intent"] == "invoice" and list(new) == list(old)
    assert {k: v for k, v in new.items() if k != "intent"} == {
        k: v for k, v in old.items() if k != "intent"
    }


def test_recall_per_intent():
    rows = load_split("val")[:40]
    truth = [intent_of(r) for r in rows]
    assert set(per_intent_recall(truth, rows).values()) == {1.0}
    wrong = ["refund" if t != "refund" else "invoice" for t in truth]
    assert set(per_intent_recall(wrong, rows).values()) == {0.0}


def test_predictions_follow_the_likelihood(tiny_dir):
    import torch

    from helpers.data import loss_mask
    from helpers.models import load_model
    from helpers.profiles import get_profile

    profile = get_profile("tiny")
    model, tokenizer = load_model(profile, path=tiny_dir)
    row = load_split("test")[0]
    (predicted,) = intent_predictions(model, tokenizer, [row], profile)
    nll = {}  # the same quantity through the model's own loss on the assistant tokens
    for intent in INTENTS:
        sample = {"messages": profile.style_messages(with_intent(row, intent))}
        ids, mask = loss_mask(sample, tokenizer, "assistant_only")
        labels = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        nll[intent] = out.loss.item() * (sum(mask[1:]))
    assert predicted == min(nll, key=nll.get)


def test_the_live_point_agrees_only_within_its_tolerance():
    from helpers.data.effect import live_agreement

    truth = ["refund"] * 38 + ["invoice"] * 2
    stored = {"predicted": truth, "accuracy": 0.5, "trained_mix": {"refund": 4, "invoice": 4}}
    two_flips = {**stored, "predicted": ["invoice"] * 2 + truth[2:]}  # 5% of 40 rows
    assert live_agreement(two_flips, stored)["agrees"]
    three_flips = {**stored, "predicted": ["invoice"] * 3 + truth[3:]}
    assert not live_agreement(three_flips, stored)["agrees"]
    other_mix = {**stored, "trained_mix": {"refund": 5, "invoice": 3}}
    check = live_agreement(other_mix, stored)
    assert not check["agrees"] and not check["same training mix"]
    assert not live_agreement({**stored, "accuracy": 0.6}, stored)["agrees"]
