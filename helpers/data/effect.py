"""Judge a data decision by its effect: train briefly on each variant, score intents per class.

    >>> from helpers.data.effect import balance_variants, run_variant
    >>> variants = balance_variants(rows, seed=0)  # none / down / up / weight
    >>> run_variant(profile, variants["down"], test_rows, out_dir)["recall"]
    {'refund': 0.6, 'invoice': 0.9, ...}

The intent is scored without generation: for each test row, the reference answer is rewritten
with every intent in turn and the model's teacher-forced log-likelihood of each version is
compared (``intent_predictions``). The most likely version's intent is the prediction. This
takes one forward pass per (row, intent) and no decoding, so it runs in seconds on the tiny
model; an under-trained model that cannot yet write the JSON still shows which intent it
prefers, which is what balancing changes.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .balance import intent_of, label_counts, rebalance
from .course import INTENTS

Row = Mapping[str, Any]
BALANCE_MODES = ("none", "down", "up", "weight")


def balance_variants(rows: Sequence[Row], *, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The training rows under each balancing choice.

    ``weight`` draws rows with probability proportional to 1 / (rows of their intent), with
    replacement, as many as there are rows: the same expected gradient as multiplying each
    row's loss by its class weight, without changing the trainer's loss function.
    """
    rows = [dict(r) for r in rows]
    counts = label_counts(rows)
    weights = [1.0 / counts[intent_of(r)] for r in rows]
    return {
        "none": rows,
        "down": rebalance(rows, mode="down", target="min", seed=seed),
        "up": rebalance(rows, mode="up", target="max", seed=seed),
        "weight": random.Random(seed).choices(rows, weights=weights, k=len(rows)),
    }


def with_intent(row: Row, intent: str) -> list[dict[str, str]]:
    """The row's messages with the answer's intent replaced (key order kept)."""
    answer = json.loads(row["messages"][-1]["content"])
    answer["intent"] = intent
    content = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
    return [*(dict(m) for m in row["messages"][:-1]), {"role": "assistant", "content": content}]


def intent_predictions(model, tokenizer, rows: Sequence[Row], profile) -> list[str]:
    """Per row, the intent whose answer the model finds most likely (teacher forcing)."""
    from helpers.evaluation.tokens import score_tokens

    convs = [profile.style_messages(with_intent(r, i)) for r in rows for i in INTENTS]
    scores = score_tokens(model, tokenizer, convs, batch_size=16, progress=False)
    logp = [sum(math.log(max(p, 1e-30)) for p in s.probs) for s in scores]
    k = len(INTENTS)
    return [INTENTS[max(range(k), key=lambda j: logp[r * k + j])] for r in range(len(rows))]


def per_intent_recall(predicted: Sequence[str], rows: Sequence[Row]) -> dict[str, float]:
    """Share of each intent's rows predicted as that intent."""
    truth = [intent_of(r) for r in rows]
    total, hit = Counter(truth), Counter(t for t, p in zip(truth, predicted, strict=True) if t == p)
    return {i: round(hit[i] / total[i], 3) for i in INTENTS if total[i]}


def run_variant(
    profile,
    train_rows: Sequence[Row],
    test_rows: Sequence[Row],
    out_dir: str | Path,
    *,
    seed: int = 0,
    model_path: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a fresh LoRA briefly on ``train_rows`` (profile.train_samples of them), then score.

    Returns the predicted intents, per-intent recall, macro recall and accuracy on
    ``test_rows`` and the intent mix the run trained on. ``overrides`` go to the trainer config
    (e.g. max_steps).
    """
    from helpers import sft
    from helpers.models import load_model

    rng = random.Random(seed)
    rows = list(train_rows)
    if profile.train_samples is not None and profile.train_samples < len(rows):
        rows = rng.sample(rows, profile.train_samples)
    styled = [{"messages": profile.style_messages(r["messages"])} for r in rows]
    model, tokenizer = load_model(profile, path=model_path)
    settings = {
        "report_to": "none",
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        "seed": seed,
    }
    trainer = sft.make_trainer(
        model, tokenizer, styled, None, profile, out_dir, **(settings | overrides)
    )
    trainer.train()
    model.eval()
    predicted = intent_predictions(model, tokenizer, test_rows, profile)
    recall = per_intent_recall(predicted, test_rows)
    truth = [intent_of(r) for r in test_rows]
    return {
        "predicted": predicted,
        "recall": recall,
        "macro_recall": round(sum(recall.values()) / len(recall), 3),
        "accuracy": round(
            sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth), 3
        ),
        "trained_mix": dict(label_counts(rows)),
        "steps": trainer.state.global_step,
    }


# The point of bench/data_synthesis.py that notebook 01 re-runs live: 01's own choice (down),
# at a budget that fits the lesson (1.1 min on cpu-demo, measured 2026-12-02 on 2 cores),
# on the first test rows.
LIVE_POINT = {"variant": "down", "max_steps": 8, "test_rows": 40}


def run_live_point(profile, variants: Mapping[str, Sequence[Row]], test_rows: Sequence[Row],
                   out_dir: str | Path, *, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """:func:`run_variant` at :data:`LIVE_POINT`: the bench stores it, the notebook repeats it."""
    point = LIVE_POINT
    run = run_variant(profile, variants[point["variant"]], test_rows[: point["test_rows"]],
                      out_dir, seed=seed, max_steps=point["max_steps"])  # fmt: skip
    return {**point, **run}


def live_agreement(live: Mapping[str, Any], stored: Mapping[str, Any], tolerance: float = 0.05):
    """Live vs stored live point: same training mix, predictions and accuracy within tolerance.

    Same code, data and seed give the same run up to floating-point rounding, which differs
    between CPUs (AVX2 vs AVX-512 kernels): an intent the model rates almost equally with
    another can flip. ``tolerance`` is the share of test rows allowed to flip (2 of 40).
    """
    same = sum(a == b for a, b in zip(live["predicted"], stored["predicted"], strict=True))
    flipped = 1 - same / len(stored["predicted"])
    return {
        "stored accuracy": stored["accuracy"],
        "live accuracy": live["accuracy"],
        "predictions that differ": round(flipped, 3),
        "same training mix": live["trained_mix"] == stored["trained_mix"],
        "agrees": live["trained_mix"] == stored["trained_mix"]
        and flipped <= tolerance + 1e-9  # 1 - 38/40 is 0.05000000000000004
        and abs(live["accuracy"] - stored["accuracy"]) <= tolerance + 1e-9,
    }
