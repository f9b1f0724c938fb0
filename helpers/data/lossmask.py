"""Which tokens carry the loss: TRL's three masking modes, token by token, checked against TRL.

Modes and the TRL 1.x options that produce them (``trl_loss_options`` returns them):

- ``"all"``: every token is a label, system and user text included. What you get with a
  ``{"messages": ...}`` dataset and no masking option (``assistant_only_loss=False``).
- ``"assistant_only"``: every assistant turn, from the ``{% generation %}`` spans of the chat
  template (content and end-of-turn token; the ``\\n`` after it is not). ``messages`` data
  with ``SFTConfig(assistant_only_loss=True)``. A turn with OpenAI's ``"weight": 0`` is left
  out (:func:`mask_unweighted_turns`, applied by ``helpers.sft.make_trainer``).
- ``"last_turn"``: only the final assistant message. The sample becomes prompt-completion
  data, ``{"prompt": [all earlier messages], "completion": [the final assistant message]}``;
  ``completion_only_loss=None`` (the default) turns on for that format, ``True`` forces it.
  The completion is everything after the rendered prompt + generation prompt, so here the
  ``\\n`` after the end-of-turn token is trained too.

TRL keeps ``labels[0]`` as a label, but the loss pairs ``labels[1:]`` with the predictions from
positions ``:-1``, so the first token is never predicted. Padding gets label -100.

    >>> from IPython.display import HTML
    >>> HTML(render_all_modes(sample, tokenizer))  # green = trained, grey = masked
"""

from __future__ import annotations

import html
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from helpers.chat_templates import training_template

Sample = Mapping[str, Any]
Mode = Literal["all", "assistant_only", "last_turn"]
MODES: tuple[Mode, ...] = ("all", "assistant_only", "last_turn")
IGNORE_INDEX = -100  # label of tokens that do not count toward the loss
TRAINED_BG, MASKED_BG = "#b6e8bd", "#e4e4e4"
_ROW = "__row__"  # extra dataset column that tracks samples through TRL's filtering
_MODE_NOTES = {
    "all": "every token: messages data, no masking option (TRL default)",
    "assistant_only": "every assistant turn: SFTConfig(assistant_only_loss=True)",
    "last_turn": "final assistant turn: prompt-completion data, completion_only_loss",
}


def sample_messages(sample: Sample) -> list[dict]:
    """The messages of a ``{"messages"}`` or conversational ``{"prompt", "completion"}`` sample."""
    if "messages" in sample:
        return list(sample["messages"])
    if isinstance(sample.get("prompt"), list) and isinstance(sample.get("completion"), list):
        return list(sample["prompt"]) + list(sample["completion"])
    keys = sorted(sample)
    raise ValueError(f'Sample has keys {keys}; expected TRL\'s {{"messages": [...]}} format.')


def _check_mode(mode: str) -> None:
    """ValueError for a mode name that is not one of MODES."""
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; choose one of {MODES}.")


def _checked(sample: Sample, mode: str) -> list[dict]:
    """The sample's messages, after checking that ``mode`` can train on them."""
    _check_mode(mode)
    messages = sample_messages(sample)
    if not any(m.get("role") == "assistant" for m in messages):
        raise ValueError(
            "Sample has no assistant message, so there is no reply to learn. "
            "Add the assistant answer or drop the sample."
        )
    if mode == "last_turn" and messages[-1].get("role") != "assistant":
        raise ValueError(
            f"mode='last_turn' trains on the final assistant message, but the last message is "
            f"{messages[-1].get('role')!r}. End the sample with an assistant turn (drop the "
            "trailing turns)."
        )
    return messages


def _ids(tokenizer, messages: list[dict], **kwargs: Any) -> dict:
    """``apply_chat_template`` tokenized, as TRL calls it."""
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)


def loss_mask(
    sample: Sample, tokenizer, mode: Mode = "assistant_only", max_length: int | None = None
) -> tuple[list[int], list[int]]:
    """``(input_ids, mask)``: mask[i] is 1 where TRL keeps ``labels[i] == input_ids[i]``."""
    messages = _checked(sample, mode)
    if mode == "all":
        ids = list(_ids(tokenizer, messages)["input_ids"])
        mask = [1] * len(ids)
    elif mode == "assistant_only":
        template = training_template(tokenizer)
        out = _ids(tokenizer, messages, return_assistant_tokens_mask=True, chat_template=template)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        if 1 not in mask:
            raise ValueError("The template marked no assistant tokens; check its generation tags.")
        if any(m.get("weight") == 0 for m in messages):  # as helpers.sft.make_trainer trains it
            labels = [t if bit else IGNORE_INDEX for t, bit in zip(ids, mask, strict=True)]
            mask = [int(t != IGNORE_INDEX) for t in mask_unweighted_turns(labels, messages)]
    else:
        prompt = _ids(tokenizer, messages[:-1], add_generation_prompt=True)["input_ids"]
        ids = list(_ids(tokenizer, messages)["input_ids"])
        start = 0  # the completion starts where prompt and full ids diverge (TRL does the same)
        while start < min(len(prompt), len(ids)) and prompt[start] == ids[start]:
            start += 1
        mask = [0] * start + [1] * (len(ids) - start)
    return ids[:max_length], mask[:max_length]  # TRL truncates with keep_start


@dataclass(frozen=True)
class Piece:
    """Consecutive tokens shown as one unit (a character can span several byte tokens)."""

    text: str
    ids: tuple[int, ...]
    trained: bool
    special: bool
    eos: bool


def token_pieces(
    sample: Sample, tokenizer, mode: Mode = "assistant_only", max_length: int | None = None
) -> list[Piece]:
    """Tokens of the rendered sample with their loss flag, byte pieces merged into characters."""
    ids, mask = loss_mask(sample, tokenizer, mode, max_length)
    special = set(tokenizer.all_special_ids)
    special |= {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    pieces: list[Piece] = []
    buf: list[int] = []

    def flush(trained: bool) -> None:
        if buf:
            sp = buf[0] in special
            eos = sp and buf[0] == tokenizer.eos_token_id
            pieces.append(Piece(tokenizer.decode(buf), tuple(buf), trained, sp, eos))
            buf.clear()

    for i, (tid, bit) in enumerate(zip(ids, mask, strict=True)):
        if buf and (tid in special or buf[0] in special or bit != mask[i - 1]):
            flush(bool(mask[i - 1]))
        buf.append(tid)
        if buf[0] in special or "\ufffd" not in tokenizer.decode(buf) or len(buf) >= 4:
            flush(bool(bit))
    flush(bool(mask[-1]) if mask else False)
    return pieces


def _visible(text: str, newline: str) -> str:
    """Whitespace made visible: space as ␣, tab as →, newline as ↵ plus ``newline``."""
    return text.replace(" ", "␣").replace("\t", "→").replace("\n", "↵" + newline)


def _span(piece: Piece) -> str:
    """One piece as an HTML span, coloured by loss flag, outlined if special."""
    classes = ["tok", "trained" if piece.trained else "masked"]
    style = f"background:{TRAINED_BG if piece.trained else MASKED_BG};padding:1px 1px;"
    style += "margin:0 1px;border-radius:3px;" + ("" if piece.trained else "color:#777;")
    if piece.special:
        classes.append("special")
        style += "font-weight:bold;outline:2px solid #333;outline-offset:-1px;"
    if piece.eos:
        classes.append("eos")
    role = " · EOS" if piece.eos else " · special" if piece.special else ""
    title = f"ids {list(piece.ids)}{role} · {'trained' if piece.trained else 'masked (-100)'}"
    text = _visible(html.escape(piece.text), "<br>")
    return f'<span class="{" ".join(classes)}" style="{style}" title="{title}">{text}</span>'


def render_loss_mask(
    sample: Sample, tokenizer, mode: Mode = "assistant_only", max_length: int | None = None
) -> str:
    """HTML view of one mode: green tokens carry loss, grey are masked, special ones outlined."""
    pieces = token_pieces(sample, tokenizer, mode, max_length)
    n = sum(len(p.ids) for p in pieces)
    k = sum(len(p.ids) for p in pieces if p.trained)
    eos = [p for p in pieces if p.eos]
    eos_note = "" if not eos else f"; EOS trained {sum(p.trained for p in eos)}/{len(eos)}"
    head = f"<b>{mode}</b>: {k}/{n} tokens carry loss{eos_note} <i>({_MODE_NOTES[mode]})</i>"
    body = "".join(_span(p) for p in pieces)
    return (
        f'<div class="lossmask mode-{mode}" style="margin:6px 0">'
        f'<div style="margin-bottom:3px">{head}</div>'
        f'<div style="font-family:monospace;line-height:2">{body}</div></div>'
    )


def render_all_modes(
    sample: Sample, tokenizer, max_length: int | None = None, modes: Sequence[Mode] = MODES
) -> str:
    """HTML with a legend and the views of all modes stacked, for a side-by-side comparison."""
    legend = (
        '<div class="legend" style="margin-bottom:4px">'
        f'<span style="background:{TRAINED_BG};padding:1px 4px">counts toward loss</span> '
        f'<span style="background:{MASKED_BG};color:#777;padding:1px 4px">masked (-100)</span> '
        '<span style="font-weight:bold;outline:2px solid #333;padding:1px 4px">special token'
        "</span> ↵ newline, ␣ space; hover a token for its ids</div>"
    )
    views = "".join(render_loss_mask(sample, tokenizer, m, max_length) for m in modes)
    return f'<div class="lossmask-all">{legend}{views}</div>'


def mask_to_text(
    sample: Sample,
    tokenizer,
    mode: Mode = "assistant_only",
    style: Literal["brackets", "dots"] = "brackets",
    max_length: int | None = None,
) -> str:
    """Plain-text view: trained runs in ⟦…⟧ ("brackets"), or masked tokens as · ("dots")."""
    out: list[str] = []
    inside = False
    for piece in token_pieces(sample, tokenizer, mode, max_length):
        if style == "dots" and not piece.trained:
            out.append("·" * len(piece.ids))
            continue
        if style == "brackets" and piece.trained != inside:
            out.append("⟦" if piece.trained else "⟧")
            inside = piece.trained
        out.append(_visible(piece.text, "\n"))
    return "".join(out) + ("⟧" if inside else "")


def trl_loss_options(mode: Mode) -> dict[str, Any]:
    """The ``SFTConfig`` keyword arguments that select ``mode`` in TRL 1.x."""
    _check_mode(mode)
    return {
        "assistant_only_loss": mode == "assistant_only",
        "completion_only_loss": True if mode == "last_turn" else None,
    }


def to_trl_row(sample: Sample, mode: Mode) -> dict[str, Any]:
    """The dataset row TRL needs for ``mode``: messages, or prompt-completion for last_turn."""
    messages = _checked(sample, mode)
    if mode == "last_turn":
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    return {"messages": messages}


def _label_model(tokenizer):
    """A one-layer random model with the tokenizer's vocabulary: all TRL needs to build labels.

    Labels depend on the tokenizer and TRL's data code only, never on the weights, so the real
    model (4-bit on the GPU profiles, which a Trainer refuses without an adapter) stays unloaded.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return Qwen2ForCausalLM(config)


def _label_trainer(rows: list[dict], tokenizer, mode: Mode, max_length: int | None):
    """An SFTTrainer over ``rows`` (a one-layer model): its dataset holds TRL's labels."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # TRL's default gradient_checkpointing=True trips transformers' rename warning: noise here
        warnings.filterwarnings("ignore", "`gradient_checkpointing", FutureWarning)
        # bf16=False: only labels are needed, and old GPUs without bf16 would refuse the config
        options = dict(report_to="none", max_length=max_length, packing=False, bf16=False)
        config = SFTConfig(tmp, **options, **trl_loss_options(mode))
        data = Dataset.from_list(rows)
        return SFTTrainer(
            _label_model(tokenizer), config, train_dataset=data, processing_class=tokenizer
        )


def trl_labels_batch(
    samples: Sequence[Sample], tokenizer, mode: Mode, max_length: int | None = 1024
) -> list[list[int]]:
    """Labels that TRL's SFTTrainer builds for each sample (-100 = masked), padding removed.

    Builds a real ``SFTTrainer`` (around a throwaway one-layer model, :func:`_label_model`) and
    runs its data collator on the prepared dataset. Like any Trainer it reseeds the RNGs and may
    set ``tokenizer.pad_token``.
    """
    from datasets.utils import logging as datasets_logging

    rows = [{**to_trl_row(s, mode), _ROW: i} for i, s in enumerate(samples)]
    bars = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()  # a map over a handful of rows: no bars
    try:
        trainer = _label_trainer(rows, tokenizer, mode, max_length)
    finally:
        if bars:
            datasets_logging.enable_progress_bar()
    data = trainer.train_dataset
    dropped = sorted(set(range(len(rows))) - set(data[_ROW]))
    if dropped:
        raise ValueError(
            f"TRL dropped samples {dropped}: no label left after truncation to max_length="
            f"{max_length}. Raise max_length or shorten the prompt."
        )
    order = sorted(range(len(data)), key=lambda j: data[j][_ROW])
    batch = trainer.data_collator(
        [{"input_ids": data[j]["input_ids"], "labels": data[j]["labels"]} for j in order]
    )
    keep = batch["attention_mask"].bool()
    return [row[k].tolist() for row, k in zip(batch["labels"], keep, strict=True)]


def trl_labels(sample: Sample, tokenizer, mode: Mode, max_length: int | None = 1024) -> list[int]:
    """Labels that TRL's SFTTrainer builds for one sample (-100 where masked)."""
    return trl_labels_batch([sample], tokenizer, mode, max_length)[0]


def mask_unweighted_turns(labels: Sequence[int], messages: Sequence[Mapping]) -> list[int]:
    """``labels`` with every assistant turn of ``weight`` 0 set to -100 (OpenAI's per-turn weight).

    Under assistant-only loss each assistant turn is one run of labels (its ``{% generation %}``
    span; the role header between turns is masked), in order, so the k-th run is the k-th
    assistant turn. Truncation cuts from the end: fewer runs than turns is fine, more is not.
    """
    weights = [m.get("weight") for m in messages if m.get("role") == "assistant"]
    labels = list(labels)
    runs: list[list[int]] = []
    for i, label in enumerate(labels):
        if label != IGNORE_INDEX:
            if not runs or runs[-1][-1] != i - 1:
                runs.append([])
            runs[-1].append(i)
    if len(runs) > len(weights):
        raise ValueError(
            f"{len(runs)} trained spans for {len(weights)} assistant turns: per-turn weights "
            "need assistant-only loss (SFTConfig(assistant_only_loss=True), the course default)."
        )
    for weight, run in zip(weights, runs, strict=False):
        if weight == 0:
            for i in run:
                labels[i] = IGNORE_INDEX
    return labels


def apply_turn_weights(dataset, assistant_only: bool):  # -> datasets.Dataset
    """A prepared SFT dataset (``messages`` + ``labels``) with weight-0 turns masked, or as is."""
    if dataset is None or "messages" not in dataset.column_names:
        return dataset
    if not any(m.get("weight") == 0 for row in dataset["messages"] for m in row):
        return dataset
    if not assistant_only:
        raise ValueError(
            "Some assistant turns have weight 0, which needs assistant-only loss: keep "
            "assistant_only_loss=True or drop the weight keys."
        )
    return dataset.map(
        lambda row: {"labels": mask_unweighted_turns(row["labels"], row["messages"])},
        desc="Masking weight-0 turns",
    )
