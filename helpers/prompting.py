"""Notebook 09: the prompting baselines (zero- and few-shot) and their cost per request.

Fine-tuning is one answer to "make the model do my task"; a prompt with the task's instructions
and k solved examples is the other. :func:`prompting_run` asks the base model the held-out
questions with k examples from the training split as earlier chat turns, scores the answers
with 04's task metrics and records what each request costs: prompt tokens and seconds (one
request at a time, as a server without batching sees them). :func:`lr_curves` draws the
learning-rate schedules the trainer offers, from transformers' own ``get_scheduler``.

    >>> prompting_run(model, tokenizer, test_rows, shots=3)  # metrics + tokens + latency
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any


def fewshot_messages(row: dict, examples: Sequence[dict], system: bool = True) -> list[dict]:
    """The task's system prompt, each example as a user/assistant turn, then the question."""
    *prompt, _ = row["messages"]
    head = [m for m in prompt if m["role"] == "system"] if system else []
    shots = [m for ex in examples for m in ex["messages"] if m["role"] != "system"]
    return [*head, *shots, *[m for m in prompt if m["role"] != "system"]]


def pick_examples(k: int, seed: int = 0) -> list[dict]:
    """k training rows with distinct intents where possible (a few-shot prompt's usual choice)."""
    from helpers.data import intent_of, load_split

    rows = load_split("train")
    random.Random(seed).shuffle(rows)
    picked: list[dict] = []
    seen: set[str] = set()
    for row in rows:  # first one per intent, then fill up
        if len(picked) < k and intent_of(row) not in seen:
            picked.append(row)
            seen.add(intent_of(row))
    return picked + [r for r in rows if r not in picked][: k - len(picked)]


def prompting_run(
    model,
    tokenizer,
    rows: Sequence[dict],
    shots: int,
    system: bool = True,
    max_new_tokens: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Task metrics of the answers, mean prompt and answer tokens, mean seconds per request.

    The latency grows with the prompt (prefill) and with the answer (one step per token).
    """
    from helpers.evaluation import generate_batch
    from helpers.evaluation.metrics import task_scores

    examples = pick_examples(shots, seed)
    conversations = [fewshot_messages(r, examples, system) for r in rows]
    tokens = [
        len(
            tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True)[
                "input_ids"
            ]
        )
        for c in conversations
    ]
    start = time.perf_counter()
    answers = generate_batch(
        model, tokenizer, conversations, max_new_tokens, batch_size=1, progress=False
    )
    seconds = (time.perf_counter() - start) / len(rows)
    scores = task_scores(answers, [r["messages"][-1]["content"] for r in rows])
    return {
        "shots": shots,
        "json_valid": scores["json_valid"],
        "field_accuracy": scores["field_accuracy"],
        "exact_match": scores["exact_match"],
        "prompt_tokens": sum(tokens) / len(tokens),
        "answer_tokens": sum(len(tokenizer(a)["input_ids"]) for a in answers) / len(answers),
        "seconds_per_request": seconds,
        "answers": answers,
    }


def lr_curves(names: Sequence[str], steps: int, lr: float = 1.0, warmup: int = 0, **kwargs):
    """The learning rate at every step for each scheduler name (a DataFrame, step x name).

    ``kwargs`` go to the schedule (e.g. ``polynomial={"power": 2.0}``): at its default power
    of 1, "polynomial" is the same line as "linear".
    """
    import pandas as pd
    import torch
    from transformers import get_scheduler

    curves = {}
    for name in names:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        schedule = get_scheduler(
            name,
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=steps,
            scheduler_specific_kwargs=kwargs.get(name),
        )
        values = []
        for _ in range(steps):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        curves[name] = values
    return pd.DataFrame(curves)
