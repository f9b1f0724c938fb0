"""helpers.data.lossmask: the masks agree with the labels TRL's SFTTrainer really builds."""

import copy
import re

import pytest

from helpers.data.lossmask import (
    MASKED_BG,
    MODES,
    TRAINED_BG,
    loss_mask,
    mask_to_text,
    render_all_modes,
    render_loss_mask,
    to_trl_row,
    token_pieces,
    trl_labels,
    trl_labels_batch,
    trl_loss_options,
)
from helpers.models import CHATML_TEMPLATE, GEMMA_TEMPLATE

SYSTEM = {"role": "system", "content": "You are a helpful support agent."}
SINGLE = {
    "messages": [
        SYSTEM,
        {"role": "user", "content": "Where is my order 1234?"},
        {"role": "assistant", "content": "Order 1234 shipped yesterday."},
    ]
}
MULTI = {
    "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Refund please"},
        {"role": "assistant", "content": "Sure, what is the order number?"},
        {"role": "user", "content": "5678"},
        {"role": "assistant", "content": "Refund for 5678 started."},
    ]
}
CHINESE = {
    "messages": [
        {"role": "system", "content": "你是电商客服小智。"},
        {"role": "user", "content": "快递到哪了？<script>🚚"},
        {"role": "assistant", "content": "您的包裹已发货 📦，预计明天送达。"},
        {"role": "user", "content": "谢谢！"},
        {"role": "assistant", "content": "不客气 😊"},
    ]
}
SAMPLES = [SINGLE, MULTI, CHINESE]
# Characters the tokenizer never saw: each is several byte tokens.
RARE = {
    "messages": [{"role": "user", "content": "生僻字?"}, {"role": "assistant", "content": "龘靐齉"}]
}
IM_END = "<|im_end|>"


def _texts() -> list[str]:
    """A few hundred short zh/en strings for the tiny tokenizer."""
    zh = ["订单", "快递", "退款", "客服", "您好", "发货", "明天", "谢谢", "包裹", "送达"]
    en = ["order", "refund", "shipped", "hello", "help", "number", "started", "agent"]
    texts = [
        f"{a}{b}，{c} {i}"
        for i, (a, b, c) in enumerate(zip(zh * 20, zh[3:] * 20, en * 25, strict=False))
    ]
    texts += [
        f"The {w} {i} is {v} 🚚📦😊"
        for i, (w, v) in enumerate(zip(en * 20, en[2:] * 20, strict=False))
    ]
    return texts + [m["content"] for s in SAMPLES for m in s["messages"]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tokenizer, model) of a tiny Qwen2 built for this module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.models import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("lossmask"), texts=_texts())
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)


@pytest.fixture(scope="module")
def trl_by_mode(tiny):
    """TRL labels of every sample, one SFTTrainer per mode."""
    tok, _ = tiny
    return {mode: trl_labels_batch(SAMPLES, tok, mode) for mode in MODES}


@pytest.fixture(scope="module")
def gemma_tok(tiny):
    """The tiny tokenizer with the Gemma turn template, a BOS token and <end_of_turn> as EOS."""
    tok = copy.deepcopy(tiny[0])
    tok.add_tokens(["<start_of_turn>", "<end_of_turn>"], special_tokens=True)
    tok.chat_template = GEMMA_TEMPLATE
    tok.bos_token, tok.eos_token = "<|endoftext|>", "<end_of_turn>"
    return tok


def _runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    """Maximal runs of ids where mask is 1."""
    runs: list[list[int]] = []
    for i, (tid, bit) in enumerate(zip(ids, mask, strict=True)):
        if bit:
            (runs[-1].append(tid) if i and mask[i - 1] else runs.append([tid]))
    return runs


def _assert_agrees(ids: list[int], mask: list[int], labels: list[int]) -> None:
    assert len(labels) == len(ids) == len(mask)
    assert [int(label != -100) for label in labels] == mask
    assert [label for label in labels if label != -100] == [
        t for t, b in zip(ids, mask, strict=True) if b
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("index", range(len(SAMPLES)))
def test_loss_mask_matches_trl(tiny, trl_by_mode, mode, index):
    ids, mask = loss_mask(SAMPLES[index], tiny[0], mode)
    _assert_agrees(ids, mask, trl_by_mode[mode][index])


@pytest.mark.parametrize("mode", MODES)
def test_gemma_template_matches_trl(tiny, gemma_tok, mode):
    labels = trl_labels_batch(SAMPLES, gemma_tok, mode)
    for sample, sample_labels in zip(SAMPLES, labels, strict=True):
        ids, mask = loss_mask(sample, gemma_tok, mode)
        _assert_agrees(ids, mask, sample_labels)
        assert ids[0] == gemma_tok.bos_token_id
        # TRL keeps the first token as a label; the shifted loss never predicts it anyway.
        assert (sample_labels[0] == ids[0]) == (mode == "all")


def test_single_trl_labels_and_truncation(tiny):
    tok, _ = tiny
    ids, mask = loss_mask(MULTI, tok, "assistant_only", max_length=40)
    assert len(ids) == 40 and 0 < sum(mask) < sum(loss_mask(MULTI, tok, "assistant_only")[1])
    _assert_agrees(ids, mask, trl_labels(MULTI, tok, "assistant_only", max_length=40))
    with pytest.raises(ValueError, match="dropped samples \\[0\\].*max_length=10"):
        trl_labels(MULTI, tok, "last_turn", max_length=10)


def test_trl_labels_need_no_model(tiny):
    """Labels come from the tokenizer and TRL's data code: the same with or without weights."""
    tok, _ = tiny
    sample_labels = trl_labels(SINGLE, tok, "assistant_only")
    ids, mask = loss_mask(SINGLE, tok, "assistant_only")
    _assert_agrees(ids, mask, sample_labels)


def test_assistant_only_marks_each_assistant_turn_and_its_end(tiny):
    tok = tiny[0]
    for sample in SAMPLES:
        ids, mask = loss_mask(sample, tok, "assistant_only")
        replies = [m["content"] for m in sample["messages"] if m["role"] == "assistant"]
        assert [tok.decode(r) for r in _runs(ids, mask)] == [r + IM_END for r in replies]


def test_last_turn_marks_only_final_turn(tiny):
    tok = tiny[0]
    for sample in SAMPLES:
        ids, mask = loss_mask(sample, tok, "last_turn")
        runs = _runs(ids, mask)
        # The completion is everything after the prompt, so the "\n" after <|im_end|> counts too.
        assert [tok.decode(r) for r in runs] == [sample["messages"][-1]["content"] + IM_END + "\n"]
        assert mask[-len(runs[0]) :] == [1] * len(runs[0])


def test_all_marks_everything(tiny):
    tok = tiny[0]
    ids, mask = loss_mask(CHINESE, tok, "all")
    assert mask == [1] * len(ids)
    assert ids == tok.apply_chat_template(CHINESE["messages"], return_dict=True)["input_ids"]


def test_trl_options_and_rows():
    assert trl_loss_options("assistant_only") == {
        "assistant_only_loss": True,
        "completion_only_loss": None,
    }
    assert trl_loss_options("last_turn")["completion_only_loss"] is True
    row = to_trl_row(MULTI, "last_turn")
    assert row["prompt"] == MULTI["messages"][:-1] and row["completion"] == MULTI["messages"][-1:]
    assert to_trl_row(MULTI, "all") == {"messages": MULTI["messages"]}


@pytest.mark.parametrize("mode", MODES)
def test_no_assistant_message_is_rejected(tiny, mode):
    sample = {"messages": [SYSTEM, {"role": "user", "content": "hi"}]}
    with pytest.raises(ValueError, match="no assistant message"):
        loss_mask(sample, tiny[0], mode)


def test_last_turn_needs_final_assistant(tiny):
    sample = {"messages": MULTI["messages"] + [{"role": "user", "content": "ok"}]}
    with pytest.raises(ValueError, match="last message is 'user'"):
        loss_mask(sample, tiny[0], "last_turn")
    assert sum(loss_mask(sample, tiny[0], "assistant_only")[1]) > 0


def test_template_without_generation_is_rejected_like_trl(tiny):
    tok, _ = tiny
    plain = copy.deepcopy(tok)
    plain.chat_template = re.sub(r"\{% (end)?generation %\}", "", CHATML_TEMPLATE)
    with pytest.raises(ValueError, match=r"\{% generation %\}.*mode='last_turn'"):
        loss_mask(SINGLE, plain, "assistant_only")
    with pytest.raises(ValueError):  # TRL cannot patch it either
        trl_labels(SINGLE, plain, "assistant_only")
    assert sum(loss_mask(SINGLE, plain, "last_turn")[1]) > 0


def test_unknown_mode_and_format(tiny):
    with pytest.raises(ValueError, match="Unknown mode"):
        loss_mask(SINGLE, tiny[0], "completion")
    with pytest.raises(ValueError, match="expected TRL.s"):
        loss_mask({"text": "hi"}, tiny[0], "all")


@pytest.mark.parametrize("sample", [CHINESE, RARE])
def test_pieces_rebuild_the_text(tiny, sample):
    tok = tiny[0]
    ids, mask = loss_mask(sample, tok, "assistant_only")
    pieces = token_pieces(sample, tok, "assistant_only")
    assert "".join(p.text for p in pieces) == tok.decode(ids)
    assert [i for p in pieces for i in p.ids] == ids
    assert [int(p.trained) for p in pieces for _ in p.ids] == mask
    assert not any("\ufffd" in p.text for p in pieces)  # byte tokens merged into characters
    assert {p.text for p in pieces if p.eos} == {IM_END}


def test_rare_characters_are_merged_from_byte_tokens(tiny):
    pieces = token_pieces(RARE, tiny[0], "last_turn")
    merged = [p.text for p in pieces if len(p.ids) > 1]
    assert {"龘", "靐", "齉"} <= set(merged)
    assert "龘靐齉" in mask_to_text(RARE, tiny[0], "last_turn")


SPAN = re.compile(r'class="tok (trained|masked)( special)?( eos)?" style="background:([^;]+);')


def test_html_colours_special_tokens_and_escaping(tiny):
    tok = tiny[0]
    html = render_loss_mask(CHINESE, tok, "assistant_only")
    spans = SPAN.findall(html)
    assert len(spans) == len(token_pieces(CHINESE, tok, "assistant_only"))
    assert all(bg == (TRAINED_BG if kind == "trained" else MASKED_BG) for kind, _, _, bg in spans)
    eos = [kind for kind, special, end, _ in spans if end]
    assert all(special for _, special, end, _ in spans if end)
    # one <|im_end|> per message: system, user, assistant, user, assistant
    assert eos == ["masked", "masked", "trained", "masked", "trained"]
    shown = "".join(re.findall(r'class="tok [^>]*>([^<]*)</span>', html))
    assert "&lt;script&gt;🚚" in shown and "<script" not in html
    assert "↵<br>" in html and "EOS trained 2/5" in html
    trained_text = "".join(re.findall(r'class="tok trained[^>]*>([^<]*)</span>', html))
    end = "&lt;|im_end|&gt;"
    assert trained_text == f"您的包裹已发货␣📦，预计明天送达。{end}不客气␣😊{end}"


def test_render_all_modes_stacks_three_views(tiny):
    html = render_all_modes(MULTI, tiny[0])
    assert [m for m in MODES if f'class="lossmask mode-{m}"' in html] == list(MODES)
    assert "counts toward loss" in html and "masked (-100)" in html
    assert html.index("mode-all") < html.index("mode-assistant_only") < html.index("mode-last_turn")


def test_mask_to_text(tiny):
    tok = tiny[0]
    text = mask_to_text(MULTI, tok, "assistant_only")
    replies = [m["content"].replace(" ", "␣") for m in MULTI["messages"][1::2]]
    assert re.findall("⟦(.*?)⟧", text, flags=re.S) == [r + IM_END for r in replies]
    ids, mask = loss_mask(MULTI, tok, "last_turn")
    dots = mask_to_text(MULTI, tok, "last_turn", style="dots")
    assert dots == "·" * mask.count(0) + "Refund␣for␣5678␣started." + IM_END + "↵\n"
    assert mask_to_text(MULTI, tok, "all").startswith("⟦<|im_start|>user↵\nHi")
