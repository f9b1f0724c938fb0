"""04's SFT diagnostics: intervals, slices, the taxonomy rules, over-said values, channels."""

import json

import pytest

from helpers import evaluation
from helpers.data import FIELDS, load_split
from helpers.evaluation import TokenScores
from helpers.evaluation.diagnostics import majority_values
from helpers.profiles import get_profile


def _answers(rows, texts):
    return [
        {"id": r["id"], "set": "main_test", "answer": t} for r, t in zip(rows, texts, strict=True)
    ]


def _reference(row):
    return row["messages"][-1]["content"]


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_rows():
    mean, low, high = evaluation.bootstrap_ci([1, 0] * 10)
    assert mean == 0.5 and low < 0.5 < high
    _, low_big, high_big = evaluation.bootstrap_ci([1, 0] * 200)
    assert high_big - low_big < (high - low) / 3  # ~1/sqrt(20) of the width
    assert evaluation.bootstrap_ci([1.0] * 7) == (1.0, 1.0, 1.0)


def test_slices_use_the_test_rows_meta_and_count_each_row_once():
    rows = load_split("test")[:60]
    # right on seen templates, not JSON on unseen ones
    texts = [_reference(r) if r["meta"]["seen_template"] else "不知道" for r in rows]
    table = evaluation.slice_table(rows, {"model": _answers(rows, texts)})
    seen = sum(r["meta"]["seen_template"] for r in rows)
    assert table.loc["seen template", "n"] == seen and table.loc["all", "n"] == len(rows)
    assert table.loc["seen template", "model"] == 1.0
    assert table.loc["unseen template", "model"] == 0.0
    assert table.loc["all", "model"] == pytest.approx(seen / len(rows))
    assert table.loc["seen template", "model 95% CI"] == "[1.00, 1.00]"
    mixed = evaluation.SLICES["mixed language"]
    answer = {"role": "assistant", "content": "{}"}
    assert mixed({"messages": [{"content": "worst service ever 订单"}, answer]})
    assert not mixed({"messages": [{"content": "查一下 DD1234567890 的物流"}, answer]})


def _probe(hits):
    return {"answers": [{"id": str(i), "reply": "", "hit": h} for i, h in enumerate(hits)]}


def test_probe_change_is_real_only_outside_its_paired_interval():
    base = _probe([True] * 30 + [False] * 70)
    lost_most = _probe([True] * 5 + [False] * 95)
    lost_one = _probe([False] + [True] * 29 + [False] * 70)
    table = evaluation.probe_intervals(
        {"base": base, "forgot": lost_most, "noise": lost_one}, "base"
    )
    assert table.loc["forgot", "change is real"]
    assert not table.loc["noise", "change is real"]
    assert not table.loc["base", "change is real"]
    assert table.loc["forgot", "change vs base"] == pytest.approx(-0.25)


def _scores(row_id, p_ref, p_top, n=5, at=2):
    probs = [1.0] * n
    tops = list(range(n))
    probs[at], tops[at] = p_ref, 999  # diverges at `at`
    top_probs = [1.0] * n
    top_probs[at] = p_top
    return TokenScores(row_id, list(range(n)), probs, tops, top_probs, [0.0] * n)


def test_taxonomy_applies_its_rules_in_order():
    rows = [r for r in load_split("test") if not r["meta"]["multi_intent"]][:6]
    train = load_split("train")
    usual = majority_values(train)
    refs = [json.loads(_reference(r)) for r in rows]

    def said(ref, **changes):
        return json.dumps({**ref, **changes}, ensure_ascii=False)

    wrong_usual = {}  # a row whose urgency differs from its intent's usual value
    for i, ref in enumerate(refs):
        value = usual[(ref["intent"], "urgency")]
        if ref["urgency"] != value and not wrong_usual:
            wrong_usual = {"row": i, "value": value}
    assert wrong_usual, "test data should hold a row whose urgency is not the usual one"
    k = wrong_usual["row"]
    copy_row = next(i for i in range(len(rows)) if i != k and refs[i]["product"])
    tuned = [_reference(r) for r in rows]
    base = ["不知道"] * len(rows)
    tuned[k] = said(refs[k], urgency=wrong_usual["value"])  # confident, usual value
    tuned[copy_row] = said(refs[copy_row], product="别的东西")  # a copy field missed
    others = [i for i in range(len(rows)) if i not in (k, copy_row)]
    away, close, never = others[:3]
    other_urgency = next(u for u in ("low", "medium", "high") if u != refs[away]["urgency"])
    tuned[away] = said(refs[away], urgency=other_urgency)
    base[away] = _reference(rows[away])  # the base had it right
    tuned[close] = "not json"
    tuned[never] = said(refs[never], sentiment="neither")
    scores = {i: _scores(rows[i]["id"], 0.01, 0.3) for i in range(len(rows))}
    scores[k] = _scores(rows[k]["id"], 0.01, 0.9)
    ids = [r["id"] for r in rows]
    kinds = evaluation.taxonomy(
        rows,
        _answers(rows, base),
        _answers(rows, tuned),
        [scores[i] for i in range(len(rows))],
        [_scores(i, 0.001, 0.5) for i in ids],
        train,
    ).set_index("id")["kind"]
    assert kinds[rows[k]["id"]] == "pattern over-fit"
    assert kinds[rows[copy_row]["id"]] == "model too small"
    assert kinds[rows[away]["id"]] == "trained away"
    assert kinds[rows[close]["id"]] == "under-trained"
    assert kinds[rows[never]["id"]] == "never knew"
    assert len(kinds) == 5  # the sixth row is right and has no class


def test_value_bias_finds_the_value_said_whatever_the_message():
    rows = load_split("test")[:50]
    always_high = [json.dumps({**json.loads(_reference(r)), "urgency": "high"}) for r in rows]
    bias = evaluation.value_bias(rows, _answers(rows, always_high), load_split("train"))
    top = bias.iloc[0]
    assert (top["field"], top["value"], top["said"]) == ("urgency", "high", 1.0)
    assert top["over-said"] == pytest.approx(1 - top["reference"])


def test_intent_losses_are_per_token_and_per_intent():
    rows = load_split("test")[:2]
    a, b = (json.loads(_reference(r))["intent"] for r in rows)
    scores = [
        TokenScores(rows[0]["id"], [1, 2], [0.5, 0.5], [1, 2], [0.5, 0.5], [0, 0]),
        TokenScores(rows[1]["id"], [1], [1.0], [1], [1.0], [0]),
    ]
    losses = evaluation.intent_losses(scores, rows)
    if a == b:
        assert losses[a] == pytest.approx(2 * 0.6931471805599453 / 3)
    else:
        assert losses[a] == pytest.approx(0.6931471805599453) and losses[b] == 0.0


def test_loss_levels_flag_a_start_above_uniform_and_an_eval_gap():
    fine = evaluation.loss_levels(
        1000, 2.0, {"first_loss": 2.1, "final_loss": 0.2, "final_eval_loss": 0.25}
    )
    assert set(fine["verdict"]) == {"", "ok"}
    broken = evaluation.loss_levels(
        1000, 2.0, {"first_loss": 9.0, "final_loss": 0.05, "final_eval_loss": 1.5}
    )
    assert "ln(V)" in broken.loc["first training loss", "verdict"]
    assert "over-fitting" in broken.loc["final eval loss", "verdict"]


def test_channels_are_held_out_and_sized(tmp_path, monkeypatch):
    from helpers import course

    monkeypatch.setenv(course.OUTPUTS_ENV_VAR, str(tmp_path))  # the shipped splits, not 01's
    channels = evaluation.channel_rows(get_profile("tiny"), per_channel=3)
    intents = [name for name in channels if name.startswith("task_")]
    assert len(intents) == 8 and all(len(channels[n]) == 3 for n in intents)
    assert len(channels["identity"]) == len(channels["general"]) == 6
    train_users = {r["messages"][-2]["content"] for r in load_split("train")}
    assert not any(
        r["messages"][-2]["content"] in train_users for n in intents for r in channels[n]
    )
    assert all(
        len(json.loads(r["messages"][-1]["content"])) == len(FIELDS) for r in channels[intents[0]]
    )


def test_live_loss_plot_keeps_every_channel():
    from helpers.sft import LiveLossPlot

    class State:
        global_step = 0

    plot, state = LiveLossPlot(), State()
    for step, (a, b) in enumerate([(3.0, 2.0), (1.0, 1.5)]):
        state.global_step = step * 5
        plot.on_log(None, state, None, logs={"eval_task_refund_loss": a, "eval_general_loss": b})
        plot.on_log(None, state, None, logs={"loss": a + 1, "learning_rate": 1e-3})
    curves = plot.channels()
    assert list(curves.columns) == ["general", "task_refund"]
    assert curves.loc[5, "task_refund"] == 1.0 and curves.loc[0, "general"] == 2.0
    assert [h["loss"] for h in plot.history if "loss" in h] == [4.0, 2.0]


def test_stop_flags_follow_the_stop_tokens(tiny_dir):
    from helpers import models

    model, tokenizer = models.load_model(get_profile("tiny"), tiny_dir)
    prompts = [[{"role": "user", "content": "你好"}], [{"role": "user", "content": "查物流"}]]
    replies, stops = evaluation.generate_batch(
        model, tokenizer, prompts, 6, progress=False, return_stops=True
    )
    assert len(replies) == len(stops) == 2 and not any(stops)  # random weights never stop
    first = tokenizer(replies[0], add_special_tokens=False)["input_ids"][0]
    config = evaluation.generation.greedy_config(model, 6, eos_token_id=[first])
    _, stops = evaluation.generate_batch(
        model,
        tokenizer,
        prompts[:1],
        6,
        progress=False,
        return_stops=True,
        generation_config=config,
    )
    assert stops == [True]  # its first greedy token declared a stop token


def test_make_trainer_logs_one_eval_loss_per_channel(tiny_dir, tmp_path):
    from helpers import models, sft

    profile = get_profile("tiny")
    model, tokenizer = models.load_model(profile, tiny_dir)
    channels = evaluation.channel_rows(profile, per_channel=2)
    rows, _ = sft.training_rows(profile)
    trainer = sft.make_trainer(
        model, tokenizer, rows[:8], channels, profile, tmp_path, max_steps=1, save_strategy="no"
    )
    metrics = trainer.evaluate()
    assert {f"eval_{name}_loss" for name in channels} <= set(metrics)
