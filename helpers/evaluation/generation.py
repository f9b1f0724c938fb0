"""Evaluation: batched generation with fixed decoding, and the course's behaviour metrics.

The same prompts and the same greedy decoding are used before training (02, baseline),
after training (03) and in the tests, so the numbers are comparable.

    >>> from helpers.evaluation import behaviour_report
    >>> report = behaviour_report(model, tokenizer, profile)  # JSON fields + self-cognition
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers.evaluation.metrics import rouge_l_chars, task_scores
from helpers.profiles import Profile

# Greedy and nothing else, stated in every report. repetition_penalty=1.0 matters: Qwen2.5-Instruct
# ships 1.05-1.1 in generation_config.json, and greedy decoding would still apply it, so base vs
# tuned, transformers vs llama.cpp and evaluation vs serving would not be compared like for like.
DECODING = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}


def greedy_config(model, max_new_tokens: int, **overrides: Any):  # -> GenerationConfig
    """A GenerationConfig that is :data:`DECODING`, whatever sampling defaults the model ships.

    Only the model's stop and pad tokens are kept; its temperature, top_p, top_k and
    repetition penalty are not inherited (a fresh config, not an update of the model's).
    """
    from transformers import GenerationConfig

    own = model.generation_config
    settings = {
        **DECODING,
        "max_new_tokens": max_new_tokens,
        "eos_token_id": own.eos_token_id,
        "pad_token_id": own.pad_token_id,
        "bos_token_id": own.bos_token_id,
    }
    return GenerationConfig(**{**settings, **overrides})


def generate_batch(
    model,
    tokenizer,
    conversations: Sequence[list[dict]] | Sequence[str],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: bool = True,
    generation_config=None,
    return_stops: bool = False,
) -> list[str] | tuple[list[str], list[bool]]:
    """Greedy replies, left-padded in batches; special tokens stripped.

    Conversations go through the chat template; plain strings are continued as they are.
    ``generation_config`` replaces :func:`greedy_config` (e.g. the model's own, to show what
    its shipped sampling defaults change). ``return_stops`` also returns, per reply, whether
    the model emitted a stop token (its end of turn) before ``max_new_tokens`` ran out.
    """
    import torch
    from tqdm.auto import tqdm

    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation appends on the right
    replies: list[str] = []
    stops: list[bool] = []
    try:
        starts = range(0, len(conversations), batch_size)
        for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
            chunk = list(conversations[start : start + batch_size])
            if isinstance(chunk[0], str):
                batch = tokenizer(chunk, padding=True, return_tensors="pt")
            else:
                batch = tokenizer.apply_chat_template(
                    chunk,
                    add_generation_prompt=True,
                    padding=True,
                    return_tensors="pt",
                    return_dict=True,
                )
            batch = batch.to(model.device)
            with torch.no_grad():
                config = generation_config or greedy_config(
                    model, max_new_tokens, pad_token_id=tokenizer.pad_token_id
                )
                out = model.generate(**batch, generation_config=config)
                # (batch, prompt_len + new_tokens)
            new = out[:, batch["input_ids"].shape[1] :]
            replies += tokenizer.batch_decode(new, skip_special_tokens=True)
            eos = config.eos_token_id
            eos = [eos] if isinstance(eos, int) else list(eos or [])
            stops += torch.isin(new, torch.tensor(eos, device=new.device)).any(dim=1).tolist()
    finally:
        tokenizer.padding_side = side
    return (replies, stops) if return_stops else replies


def prompt_messages(row: dict, profile: Profile) -> list[dict]:
    """The prompt part of a row (every turn but the answer), as the profile trains it."""
    return profile.style_messages(row["messages"][:-1])


def names_assistant(reply: str) -> bool:
    """True when a reply names the course assistant (小调 / TuneBot)."""
    from helpers.data import ASSISTANT_NAME, ASSISTANT_NAME_EN

    return ASSISTANT_NAME in reply or ASSISTANT_NAME_EN.lower() in reply.lower()


def eval_sets(profile: Profile) -> dict[str, list[dict]]:
    """Held-out rows the course evaluates on: the main test split and self-cognition eval."""
    from helpers.data import load_self_cognition, load_split

    test = load_split("test")[: profile.eval_rows]
    cognition = [r for r in load_self_cognition() if r["meta"]["split"] == "eval"]
    return {"main_test": test, "self_cognition": cognition}


def behaviour_report(model, tokenizer, profile: Profile, progress: bool = True) -> dict[str, Any]:
    """Main-task JSON metrics and self-cognition hit rate on held-out data, with the answers."""
    sets = eval_sets(profile)
    test, cognition = sets["main_test"], sets["self_cognition"]
    runs = {  # set -> (replies, whether each stopped), at the lengths "decoding" states
        name: generate_batch(
            model,
            tokenizer,
            [prompt_messages(r, profile) for r in rows],
            max_new_tokens,
            progress=progress,
            return_stops=True,
        )
        for name, rows, max_new_tokens in (
            ("main_test", test, 64),
            ("self_cognition", cognition, 48),
        )
    }
    (answers, stopped), (replies, replies_stopped) = runs["main_test"], runs["self_cognition"]
    metrics = task_scores(answers, [r["messages"][-1]["content"] for r in test])
    metrics["stop_rate"] = sum(stopped) / len(stopped)  # answers that ended with end-of-turn
    metrics["self_cognition_hit"] = sum(map(names_assistant, replies)) / len(replies)
    references = [r["messages"][-1]["content"] for r in cognition]
    rouge = [rouge_l_chars(a, ref) for a, ref in zip(replies, references, strict=True)]
    metrics["self_cognition_rouge_l"] = sum(rouge) / len(rouge)
    metrics["self_cognition_stop_rate"] = sum(replies_stopped) / len(replies_stopped)
    outputs = {
        "main_test": (test, answers, stopped),
        "self_cognition": (cognition, replies, replies_stopped),
    }
    return {
        "metrics": metrics,
        "decoding": {**DECODING, "max_new_tokens": {"main_test": 64, "self_cognition": 48}},
        "answers": [
            {"id": r["id"], "set": name, "answer": a, "stopped": stop}
            for name, (rows, outs, stops) in outputs.items()
            for r, a, stop in zip(rows, outs, stops, strict=True)
        ],
    }


def stored_or_measured(
    path: Path, model, tokenizer, profile: Profile, progress: bool = True
) -> tuple[dict[str, Any], str]:
    """The behaviour report saved at ``path`` (by 02 or 03) if it matches today's evaluation.

    It matches when it holds every metric and answers the same held-out prompts; otherwise
    the model is measured now. Returns the report and where it came from.
    """
    import json

    wanted = {(name, r["id"]) for name, rows in eval_sets(profile).items() for r in rows}
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        have = {(a["set"], a["id"]) for a in saved.get("answers", [])}
        keys = {"json_valid", "field_accuracy", "self_cognition_hit", "self_cognition_rouge_l"}
        if have == wanted and keys <= saved.get("metrics", {}).keys():
            return saved, f"saved: {path}"
    return behaviour_report(model, tokenizer, profile, progress=progress), "measured now"
