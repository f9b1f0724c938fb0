"""OpenAI's per-turn ``weight``: a weight-0 assistant turn gets label -100, the others train."""

import pytest

from helpers import sft
from helpers.data.lossmask import IGNORE_INDEX, loss_mask, mask_unweighted_turns
from helpers.jobs.validate import Invalid, parse_rows
from helpers.profiles import get_profile

TINY = get_profile("tiny")
TURNS = [
    {"role": "user", "content": "Where is my order 1234?"},
    {"role": "assistant", "content": "It shipped yesterday.", "weight": 0},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You are welcome.", "weight": 1},
]


def _runs(mask):
    """[(start, end)] of the runs of 1 in a 0/1 mask."""
    runs, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_a_weight_0_turn_gets_label_minus_100_exactly_on_its_tokens(tmp_path):
    from helpers.models import load_model

    model, tokenizer = load_model(TINY)
    plain = [{k: v for k, v in m.items() if k != "weight"} for m in TURNS]
    rows = [{"messages": TURNS}, {"messages": plain}]
    trainer = sft.make_trainer(model, tokenizer, rows, None, TINY, tmp_path)
    data = trainer.train_dataset
    weighted, unweighted = data[0], data[1]
    ids, mask = loss_mask({"messages": plain}, tokenizer, "assistant_only")
    assert weighted["input_ids"] == unweighted["input_ids"] == ids  # same text, same tokens
    (first_start, first_end), (second_start, second_end) = _runs(mask)
    skipped = set(range(first_start, first_end))
    for i, label in enumerate(weighted["labels"]):
        if i in skipped:
            assert label == IGNORE_INDEX, i
        else:  # everything else exactly as TRL's assistant-only mask says
            assert label == unweighted["labels"][i], i
    assert weighted["labels"][second_start:second_end] == ids[second_start:second_end]
    assert unweighted["labels"][first_start:first_end] == ids[first_start:first_end]
    _, shown = loss_mask({"messages": TURNS}, tokenizer, "assistant_only")  # 01's view agrees
    assert shown == [int(label != IGNORE_INDEX) for label in weighted["labels"]]


def test_weights_need_assistant_only_loss_and_one_span_per_turn():
    labels = [-100, 5, 6, -100, 7, -100]
    assert mask_unweighted_turns(labels, TURNS) == [-100, -100, -100, -100, 7, -100]
    assert mask_unweighted_turns(labels[:3], TURNS) == [-100, -100, -100]  # truncated
    with pytest.raises(ValueError, match="assistant-only loss"):
        mask_unweighted_turns([5, -100, 6, -100, 7], TURNS)  # more spans than turns: not TRL's


def test_upload_keeps_weight_0_and_refuses_bad_weights():
    import json

    ok = [{"messages": TURNS}] * 2
    rows = parse_rows("".join(json.dumps(r) + "\n" for r in ok).encode())
    assert [m.get("weight") for m in rows[0]["messages"]] == [None, 0, None, None]
    for weight in (2, "1", True, 0.5):
        bad = [{"messages": [TURNS[0], {**TURNS[1], "weight": weight}]}]
        with pytest.raises(Invalid, match=r"messages\[1\]\.weight"):
            parse_rows(json.dumps(bad[0]).encode())
    on_user = {"messages": [{**TURNS[0], "weight": 1}, TURNS[3]]}
    with pytest.raises(Invalid, match="only assistant turns"):
        parse_rows(json.dumps(on_user).encode())
