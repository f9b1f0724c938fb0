"""Preference pairs for DPO from the course's own task: on-policy negatives, checks, two layouts.

A pair is TRL's conversational preference row: ``prompt`` (messages without the answer),
``chosen`` (the reference answer) and ``rejected`` (a wrong answer), each a list of messages.
The rejected answers are the SFT model's own (sampled, on-policy), so DPO trains against the
mistakes this model really makes; each pair names the first field that answer got wrong.

    >>> samples = sample_answers(model, tokenizer, rows, profile, n=2)  # temperature 1.0
    >>> pairs = build_pairs(rows, samples, profile)  # one pair per distinct wrong sample
    >>> kept, report = clean_pairs(pairs, test_rows)  # validated, de-duplicated, decontaminated
    >>> write_pairs(kept, "pairs.jsonl", layout="openai")  # or "trl"; load_pairs reads both

OpenAI's preference fine-tuning layout is ``{"input": {"messages": [...]},
"preferred_output": [...], "non_preferred_output": [...]}``; TRL's is ``{"prompt", "chosen",
"rejected"}``. Notebook 07 exports TRL rows with a ``request_id`` (its served answer rejected).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from helpers.data import FIELDS, parse_answer
from helpers.data.course import same_value
from helpers.data.validation import (
    MALFORMED_JSON,
    MISSING_FIELD,
    UNKNOWN_FORMAT,
    DataError,
    DropReport,
    validate_messages,
)
from helpers.profiles import Profile

INVALID_JSON = "invalid_json"  # first_wrong of an answer that does not parse
SAME_ANSWERS = "same_answers"  # drop reason: chosen and rejected say the same thing
SAME_FIX = "drop the pair: a preference needs two different answers"
LAYOUTS = ("trl", "openai")


def first_wrong_field(answer: str, reference: str) -> str | None:
    """The first field (in FIELDS order) ``answer`` gets wrong, ``"invalid_json"``, or None."""
    got, want = parse_answer(answer), json.loads(reference)
    if got is None:
        return INVALID_JSON
    return next((f for f in FIELDS if not same_value(got.get(f, "<missing>"), want.get(f))), None)


def sample_answers(
    model,
    tokenizer,
    rows: Sequence[dict],
    profile: Profile,
    n: int = 2,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> list[list[str]]:
    """``n`` sampled answers per row from ``model`` (pure sampling: no top-k, no top-p).

    Sampling at temperature 1.0 draws from the model's own distribution, so the wrong ones are
    the mistakes it really makes (on-policy); greedy decoding would give one answer per prompt.
    """
    import torch

    from helpers.evaluation.generation import generate_batch, greedy_config, prompt_messages

    config = greedy_config(
        model, 64, do_sample=True, temperature=temperature, top_k=0, top_p=1.0
    )  # 64 new tokens, as behaviour_report gives the task
    config.pad_token_id = tokenizer.pad_token_id
    prompts = [prompt_messages(r, profile) for r in rows for _ in range(n)]
    torch.manual_seed(seed)
    flat = generate_batch(
        model, tokenizer, prompts, 64, progress=progress, generation_config=config
    )
    return [flat[i * n : (i + 1) * n] for i in range(len(rows))]


def build_pairs(
    rows: Sequence[dict], samples: Sequence[Sequence[str]], profile: Profile
) -> list[dict[str, Any]]:
    """One pair per distinct wrong sample: chosen = the row's reference, rejected = the sample.

    Right samples make no pair (nothing to prefer). Each pair keeps ``id`` (row id and sample
    number), ``first_wrong`` (see :func:`first_wrong_field`) and ``origin`` ("on-policy").
    """
    pairs = []
    for row, answers in zip(rows, samples, strict=True):
        reference = row["messages"][-1]["content"]
        prompt = profile.style_messages(row["messages"][:-1])
        for k, answer in enumerate(dict.fromkeys(answers)):  # distinct, in sampling order
            wrong = first_wrong_field(answer, reference)
            if wrong is not None:
                pairs.append(
                    {
                        "prompt": prompt,
                        "chosen": [{"role": "assistant", "content": reference}],
                        "rejected": [{"role": "assistant", "content": answer}],
                        "id": f"{row['id']}/s{k}",
                        "first_wrong": wrong,
                        "origin": "on-policy",
                    }
                )
    return pairs


def _pair_text(row: Mapping[str, Any]) -> str:
    """The whole pair as text: the exact-duplicate key (same prompt and both answers)."""
    turns = [*row["prompt"], *row["chosen"], *row["rejected"]]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


def clean_pairs(
    pairs: Iterable[Mapping[str, Any]], test_rows: Sequence[dict], progress: bool = False
) -> tuple[list[dict[str, Any]], DropReport]:
    """Valid, distinct pairs whose prompt is not in the test set; a ledger of every drop.

    Checks through ``helpers.data``: prompt + chosen and prompt + rejected are each a valid
    conversation (``validate_messages``), the two answers differ, exact duplicates go
    (``exact_dedup`` on the whole pair) and prompts that match a test row exactly or nearly
    go (``decontaminate``: 07's logged traffic can repeat a test question).
    """
    from helpers.data.dedup import decontaminate, exact_dedup

    pairs = [dict(p) for p in pairs]
    report = DropReport(input_count=len(pairs))
    valid = []
    for p in pairs:
        file, line = _origin(p)
        try:
            for side in ("chosen", "rejected"):
                if side not in p or "prompt" not in p:
                    raise DataError(MISSING_FIELD, f"pair has no {side!r} or 'prompt'", field=side)
                validate_messages([*p["prompt"], *p[side]])
            if p["chosen"][-1]["content"].strip() == p["rejected"][-1]["content"].strip():
                raise DataError(
                    SAME_ANSWERS, "chosen equals rejected", field="rejected", fix=SAME_FIX
                )
        except DataError as err:
            report.drop_error(err.located(file, line), stage="validate pairs")
            continue
        valid.append({**p, "messages": [*p["prompt"], *p["chosen"]]})  # helpers.data's row shape
    report.close(len(valid))
    distinct, _ = exact_dedup(valid, key=_pair_text, report=report, progress=progress)
    kept, _ = decontaminate(distinct, test_rows, report=report, progress=progress)
    return [{k: v for k, v in p.items() if k != "messages"} for p in kept], report


def _origin(pair: Mapping[str, Any]) -> tuple[str, int | None]:
    source = pair.get("source") or {}
    return str(source.get("file", pair.get("origin", "<memory>"))), source.get("line")


# ---------------------------------------------------------------------------- layouts


def to_openai(pair: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's preference (DPO) fine-tuning row; nothing else (its validator rejects extras)."""
    return {
        "input": {"messages": [dict(m) for m in pair["prompt"]]},
        "preferred_output": [dict(m) for m in pair["chosen"]],
        "non_preferred_output": [dict(m) for m in pair["rejected"]],
    }


def to_trl(pair: Mapping[str, Any]) -> dict[str, Any]:
    """TRL's conversational preference row: exactly what DPOTrainer reads."""
    return {k: [dict(m) for m in pair[k]] for k in ("prompt", "chosen", "rejected")}


def from_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A pair from either layout (TRL conversational or OpenAI); extra keys are kept.

    07's ``request_id`` becomes the pair's ``id``. Raises :class:`DataError` on anything else.
    """
    if "input" in record and "preferred_output" in record:
        pair = {
            "prompt": record["input"].get("messages"),
            "chosen": record["preferred_output"],
            "rejected": record.get("non_preferred_output"),
        }
        extra = {}
    elif {"prompt", "chosen", "rejected"} <= record.keys():
        pair = {k: record[k] for k in ("prompt", "chosen", "rejected")}
        extra = {k: v for k, v in record.items() if k not in pair}
    else:
        raise DataError(
            UNKNOWN_FORMAT,
            f"keys {sorted(record)}",
            fix="write TRL rows (prompt, chosen, rejected) or OpenAI rows (input, "
            "preferred_output, non_preferred_output)",
        )
    if not all(isinstance(v, list) for v in pair.values()):
        raise DataError(
            UNKNOWN_FORMAT,
            "prompt, chosen and rejected must be lists of messages (conversational)",
            fix='wrap text as [{"role": "user", "content": ...}] and [{"role": "assistant", ...}]',
        )
    if "request_id" in extra:
        extra.setdefault("id", extra["request_id"])
    return {**pair, **extra}


def load_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Pairs from a JSONL file in either layout; each remembers its file and line."""
    pairs = []
    with open(path, encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise DataError(UNKNOWN_FORMAT, "a line must hold one JSON object")
                pair = from_record(record)
            except json.JSONDecodeError as err:
                raise DataError(MALFORMED_JSON, err.msg, file=str(path), line=line) from None
            except DataError as err:
                raise err.located(str(path), line) from None
            pairs.append({**pair, "source": {"file": str(path), "line": line}})
    return pairs


def write_pairs(pairs: Iterable[Mapping[str, Any]], path: str | Path, layout: str = "trl") -> int:
    """Write pairs as JSONL in ``layout`` ("trl" or "openai"); returns the number written."""
    from helpers.data import write_jsonl

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    convert = to_openai if layout == "openai" else to_trl
    return write_jsonl((convert(p) for p in pairs), path)


def wrong_field_counts(pairs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many pairs first go wrong at each field (invalid JSON first, then FIELDS order)."""
    counts = dict.fromkeys([INVALID_JSON, *FIELDS], 0)
    for p in pairs:
        if p.get("first_wrong") in counts:
            counts[p["first_wrong"]] += 1
    return counts
