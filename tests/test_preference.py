"""Preference pairs (helpers.preference) and DPO on the tiny model (helpers.dpo)."""

import dataclasses
import json

import pytest

from helpers import dpo, preference
from helpers.data import load_split
from helpers.data.validation import DataError
from helpers.profiles import get_profile

TINY = get_profile("tiny")


def _row(i=0):
    return load_split("train")[i]


def _answer(row, **changes):
    answer = json.loads(row["messages"][-1]["content"])
    return json.dumps({**answer, **changes}, ensure_ascii=False)


def test_first_wrong_field_follows_the_field_order():
    row = _row()
    reference = row["messages"][-1]["content"]
    assert preference.first_wrong_field(reference, reference) is None
    assert preference.first_wrong_field("not json", reference) == "invalid_json"
    both = _answer(row, urgency="nope", sentiment="nope")
    assert preference.first_wrong_field(both, reference) == "sentiment"  # FIELDS order
    assert preference.first_wrong_field(_answer(row, urgency="nope"), reference) == "urgency"


def test_build_pairs_keeps_distinct_wrong_samples_only():
    row = _row()
    right, wrong = row["messages"][-1]["content"], _answer(row, urgency="nope")
    pairs = preference.build_pairs([row], [[right, wrong, wrong, "{"]], TINY)
    assert [p["first_wrong"] for p in pairs] == ["urgency", "invalid_json"]
    assert [p["id"] for p in pairs] == [f"{row['id']}/s1", f"{row['id']}/s2"]
    pair = pairs[0]
    assert pair["prompt"] == TINY.style_messages(row["messages"][:-1])
    assert pair["chosen"] == [{"role": "assistant", "content": right}]
    assert pair["rejected"] == [{"role": "assistant", "content": wrong}]


def test_clean_pairs_drops_invalid_same_duplicate_and_test_overlap_with_a_ledger():
    train, test = _row(), load_split("test")[0]
    good = preference.build_pairs([train], [[_answer(train, urgency="x")]], TINY)[0]
    leaked = preference.build_pairs([test], [[_answer(test, urgency="x")]], TINY)[0]
    same = {**good, "id": "same", "rejected": good["chosen"]}
    broken = {**good, "id": "broken", "prompt": [{"role": "assistant", "content": "hi"}]}
    kept, report = preference.clean_pairs([good, dict(good), same, broken, leaked], [test])
    assert [p["id"] for p in kept] == [good["id"]]
    assert report.counts() == {
        "same_answers": 1,
        "roles_out_of_order": 1,
        "exact_duplicate": 1,
        "test_overlap": 1,
    }
    report.verify()
    assert "messages" not in kept[0]


def test_layouts_round_trip_and_openai_rows_hold_only_their_keys(tmp_path):
    row = _row()
    pairs = preference.build_pairs([row], [[_answer(row, urgency="x")]], TINY)
    for layout in preference.LAYOUTS:
        path = tmp_path / f"{layout}.jsonl"
        assert preference.write_pairs(pairs, path, layout=layout) == 1
        back = preference.load_pairs(path)
        assert [preference.to_trl(p) for p in back] == [preference.to_trl(p) for p in pairs]
        assert back[0]["source"] == {"file": str(path), "line": 1}
    line = json.loads((tmp_path / "openai.jsonl").read_text(encoding="utf-8"))
    assert set(line) == {"input", "preferred_output", "non_preferred_output"}
    assert line["input"]["messages"][-1]["role"] == "user"


def test_07s_flywheel_rows_load_with_their_request_id(tmp_path):
    row = _row()
    pair = preference.to_trl(preference.build_pairs([row], [["{"]], TINY)[0])
    path = tmp_path / "preference_pairs.jsonl"
    path.write_text(json.dumps({**pair, "request_id": "req-1"}) + "\n", encoding="utf-8")
    (loaded,) = preference.load_pairs(path)
    assert loaded["id"] == "req-1" and loaded["request_id"] == "req-1"


def test_load_pairs_names_file_and_line_of_a_bad_row(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": [], "chosen": [], "rejected": []}\n{"text": "x"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl, line 2: unknown_format"):
        preference.load_pairs(path)
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    with pytest.raises(DataError, match="conversational"):
        preference.load_pairs(path)
    with pytest.raises(ValueError, match="layout"):
        preference.write_pairs([], tmp_path / "x.jsonl", layout="csv")


def test_reward_table_is_beta_times_the_log_ratio():
    import pandas as pd

    policy = pd.DataFrame({"chosen": [-10.0, -5.0], "rejected": [-20.0, -4.0]}, index=["a", "b"])
    reference = pd.DataFrame({"chosen": [-9.0, -5.0], "rejected": [-12.0, -5.0]}, index=["a", "b"])
    table = dpo.reward_table(policy, reference, beta=0.5)
    assert table["reward_chosen"].tolist() == [-0.5, 0.0]
    assert table["reward_rejected"].tolist() == [-4.0, 0.5]
    assert table["margin"].tolist() == [3.5, -0.5]
    summary = dpo.reward_summary(table)
    assert summary["accuracy"] == 0.5 and summary["prefers_chosen"] == 0.5
    tie = dpo.reward_summary(dpo.reward_table(reference, reference, beta=0.5))
    assert tie["accuracy"] == 0.0 and tie["margin"] == 0.0  # TRL: a tie is not correct


@pytest.mark.parametrize(
    ("name", "fp16", "bf16", "checkpointing"),
    [("tiny", False, False, False), ("t4", True, False, True), ("24g", False, True, True)],
)
def test_dpo_config_sets_precision_from_the_profile(name, fp16, bf16, checkpointing, monkeypatch):
    import trl

    passed = {}

    class Recorder(trl.DPOConfig):  # fp16 cannot be built on a CPU: record what would be passed
        def __init__(self, **kwargs):
            passed.update(kwargs)

    monkeypatch.setattr(trl, "DPOConfig", Recorder)
    dpo.dpo_config(get_profile(name), "out")
    assert (passed["fp16"], passed["bf16"]) == (fp16, bf16)  # TRL would default to bf16=True
    assert passed["activation_checkpointing"] is checkpointing
    assert set(passed) <= {f.name for f in dataclasses.fields(trl.DPOConfig)}


def test_dpo_config_defaults_on_tiny(tmp_path):
    config = dpo.dpo_config(TINY, tmp_path)
    assert (config.fp16, config.bf16, config.activation_checkpointing) == (False, False, False)
    assert (config.max_steps, config.per_device_train_batch_size, config.beta) == (4, 2, 0.1)
    assert config.loss_type == ["sigmoid"] and config.learning_rate == TINY.learning_rate / 10


@pytest.fixture(scope="module")
def tiny_sft_adapter(tiny_dir, tmp_path_factory):
    """A tiny SFT adapter trained a few steps (what 03 leaves), and some pairs."""
    from helpers import models, sft

    root = tmp_path_factory.mktemp("dpo")
    model, tokenizer = models.load_model(TINY, tiny_dir)
    rows, _ = sft.training_rows(TINY)
    trainer = sft.make_trainer(
        model, tokenizer, rows, None, TINY, root / "sft", save_strategy="no", max_steps=4
    )
    trainer.train()
    sft.save_adapter(trainer, root / "adapter")
    train = load_split("train")[-8:]
    answers = [[_answer(r, urgency="nope"), "{"] for r in train]
    return root, preference.build_pairs(train, answers, TINY)


@pytest.mark.usefixtures("one_thread")
def test_dpo_trains_the_sft_adapter_against_a_frozen_copy(tiny_sft_adapter, tiny_dir, monkeypatch):
    from trl.trainer.utils import use_adapter

    from helpers import models

    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tiny_dir.parent))  # load_model finds this one
    root, pairs = tiny_sft_adapter
    policy, tokenizer = dpo.load_sft_policy(TINY, root / "adapter")
    held, train = pairs[:4], pairs[4:]
    reference = dpo.pair_logps(policy, tokenizer, held)
    trainer = dpo.make_dpo_trainer(policy, tokenizer, train, TINY, root / "run", report_to=[])
    assert sorted(trainer.model.peft_config) == ["default", "ref"]  # no second base model
    assert trainer.ref_model is None
    trainer.train()
    history = dpo.reward_history(trainer)
    assert history["loss"].iloc[0] == pytest.approx(0.6931, abs=1e-3)  # ln 2: policy == ref
    after = dpo.pair_logps(trainer.model, tokenizer, held)
    assert (after - reference).abs().to_numpy().max() > 1e-4
    with use_adapter(trainer.model, "ref"):
        frozen = dpo.pair_logps(trainer.model, tokenizer, held)
    assert (frozen - reference).abs().to_numpy().max() < 1e-4  # "ref" is still the SFT model
