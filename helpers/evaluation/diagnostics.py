"""SFT diagnostics (notebook 04): slices with bootstrap intervals, the JSON-prefix probe, a
bad-case taxonomy, the over-fit value probe, eval channels and the loss levels to expect.

Each function reads what the evaluation already produced (answers, teacher-forced token scores,
the test rows' own ``meta``) and returns a table; only ``prefix_probe`` generates.

    >>> slice_table(rows, {"base": before["answers"], "fine-tuned": after["answers"]})
    >>> taxonomy(rows, before["answers"], after["answers"], tuned_scores, base_scores, train)
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from helpers.data import FIELDS, parse_answer
from helpers.data.course import same_value
from helpers.profiles import Profile

JSON_PREFIX = '{"intent":"'  # the opening every course answer starts with
COPY_FIELDS = ("order_id", "product", "amount")  # read off the message; the rest are judgments
_LATIN_WORD = re.compile(r"(?<![A-Za-z0-9])(?!DD\d)[A-Za-z]{3,}")  # not an order id

SLICES: dict[str, Callable[[dict], bool]] = {
    "seen template": lambda r: r["meta"]["seen_template"],
    "unseen template": lambda r: not r["meta"]["seen_template"],
    "typo": lambda r: r["meta"]["typo"],
    "multi-request": lambda r: r["meta"]["multi_intent"],
    "mixed language": lambda r: bool(_LATIN_WORD.search(r["messages"][-2]["content"])),
    "all": lambda r: True,
}


def bootstrap_ci(
    values: Sequence[float], n: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of ``values`` (rows resampled with replacement)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return math.nan, math.nan, math.nan
    means = np.random.default_rng(seed).choice(data, (n, data.size)).mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(data.mean()), float(low), float(high)


def _row_fields(answer: str, reference: str) -> list[bool] | None:
    """Per-field hits of one answer, None when it is not a JSON object."""
    pred, ref = parse_answer(answer), json.loads(reference)
    if pred is None:
        return None
    return [same_value(pred.get(f, "<missing>"), ref.get(f)) for f in FIELDS]


def slice_table(
    rows: Sequence[dict],
    answers: Mapping[str, Sequence[dict]],
    slices: Mapping[str, Callable[[dict], bool]] = SLICES,
    metric: str = "field_accuracy",
):
    """``metric`` (field_accuracy or exact_match) per slice and model, with 95% intervals."""
    import pandas as pd

    by_model = {
        name: {a["id"]: a["answer"] for a in ans if a["set"] == "main_test"}
        for name, ans in answers.items()
    }
    out = []
    for slice_name, keep in slices.items():
        chosen = [r for r in rows if keep(r)]
        line = {"slice": slice_name, "n": len(chosen)}
        for name, got in by_model.items():
            hits = [_row_fields(got[r["id"]], r["messages"][-1]["content"]) for r in chosen]
            per_row = [
                0.0 if h is None else (sum(h) / len(h) if metric == "field_accuracy" else all(h))
                for h in hits
            ]
            mean, low, high = bootstrap_ci(per_row)
            line.update({name: mean, f"{name} 95% CI": f"[{low:.2f}, {high:.2f}]"})
        out.append(line)
    return pd.DataFrame(out).set_index("slice")


def probe_intervals(reports: Mapping[str, dict], reference: str):
    """Probe accuracy per model with a 95% interval, and the paired change vs ``reference``."""
    import pandas as pd

    hits = {name: [float(a["hit"]) for a in r["answers"]] for name, r in reports.items()}
    out = []
    for name, values in hits.items():
        mean, low, high = bootstrap_ci(values)
        diffs = [a - b for a, b in zip(values, hits[reference], strict=True)]
        d_mean, d_low, d_high = bootstrap_ci(diffs)  # paired: the same questions resampled
        out.append(
            {
                "model": name,
                "accuracy": mean,
                "95% CI": f"[{low:.2f}, {high:.2f}]",
                f"change vs {reference}": d_mean,
                "change 95% CI": f"[{d_low:+.2f}, {d_high:+.2f}]",
                "change is real": name != reference and (d_high < 0 or d_low > 0),
            }
        )
    return pd.DataFrame(out).set_index("model")


def prefix_probe(
    model, tokenizer, rows: Sequence[dict], profile: Profile, prefix: str = JSON_PREFIX
) -> list[str]:
    """Greedy answers with the assistant turn forced to start with ``prefix`` (prefix included).

    A model that then completes valid JSON can write the format and only did not know to; one
    that still cannot was never able to.
    """
    from helpers.evaluation.generation import generate_batch, prompt_messages

    bos = tokenizer.bos_token or ""
    prompts = []
    for r in rows:
        text = tokenizer.apply_chat_template(
            prompt_messages(r, profile), tokenize=False, add_generation_prompt=True
        )
        # plain strings are tokenized with special tokens: the tokenizer adds the BOS back
        prompts.append((text.removeprefix(bos) if bos else text) + prefix)
    continued = generate_batch(model, tokenizer, prompts, 64, progress=False)
    return [prefix + c.split("\n")[0] for c in continued]


def task_answers(rows: Sequence[dict]) -> list[dict]:
    """The JSON answers of the main-task rows among ``rows`` (identity and replay rows skipped)."""
    parsed = (parse_answer(r["messages"][-1]["content"]) for r in rows)
    return [a for a in parsed if a is not None and "intent" in a]


def majority_values(train_rows: Sequence[dict]) -> dict[tuple[str, str], object]:
    """The most common training value of each field per intent: (intent, field) -> value."""
    counts: dict[tuple[str, str], Counter] = {}
    for answer in task_answers(train_rows):
        for f in FIELDS:
            counts.setdefault((answer["intent"], f), Counter())[json.dumps(answer[f])] += 1
    return {key: json.loads(c.most_common(1)[0][0]) for key, c in counts.items()}


TAXONOMY = ("trained away", "pattern over-fit", "under-trained", "model too small", "never knew")


def taxonomy(rows, base_answers, tuned_answers, tuned_scores, base_scores, train_rows):
    """One class per wrong fine-tuned answer, by the rules in order (first match wins):

    1. trained away: the base model had this field right.
    2. pattern over-fit: the wrong value is the training set's usual value of the field for
       this intent, said with confidence (p of its own token >= 0.5).
    3. under-trained: not JSON, or the right token was a close second (p >= 0.1).
    4. model too small: a copy field (order id, product, amount) whose value is in the
       message verbatim, and the model still missed it.
    5. never knew: the rest: a judgment neither the base nor the fine-tuned model had.
    """
    import pandas as pd

    base = {a["id"]: a["answer"] for a in base_answers if a["set"] == "main_test"}
    tuned = {a["id"]: a["answer"] for a in tuned_answers if a["set"] == "main_test"}
    t_scores, b_scores = {s.id: s for s in tuned_scores}, {s.id: s for s in base_scores}
    usual = majority_values(train_rows)
    out = []
    for r in rows:
        reference = json.loads(r["messages"][-1]["content"])
        pred = parse_answer(tuned[r["id"]])
        hits = _row_fields(tuned[r["id"]], r["messages"][-1]["content"])
        if hits is not None and all(hits):
            continue
        field = None if hits is None else FIELDS[hits.index(False)]
        s, b = t_scores[r["id"]], b_scores[r["id"]]
        at = s.first_divergence if s.first_divergence is not None else s.n - 1
        p_ref, p_top, p_base = s.probs[at], s.top_probs[at], b.probs[at]
        base_hits = _row_fields(base[r["id"]], r["messages"][-1]["content"])
        said = None if pred is None else pred.get(field)
        if field and base_hits is not None and base_hits[FIELDS.index(field)]:
            kind = "trained away"
        elif field and p_top >= 0.5 and same_value(said, usual.get((reference["intent"], field))):
            kind = "pattern over-fit"
        elif field is None or p_ref >= 0.1:
            kind = "under-trained"
        elif field in COPY_FIELDS and str(reference[field]) in r["messages"][-2]["content"]:
            kind = "model too small"
        else:
            kind = "never knew"
        out.append(
            {
                "id": r["id"],
                "kind": kind,
                "field": field or "(not JSON)",
                "message": r["messages"][-2]["content"],
                "reference": reference.get(field) if field else None,
                "said": said if field else tuned[r["id"]][:40],
                "p_reference": round(p_ref, 3),
                "p_own_choice": round(p_top, 3),
                "p_reference_base": round(p_base, 4),
            }
        )
    return pd.DataFrame(
        out,
        columns=[
            "id",
            "kind",
            "field",
            "message",
            "reference",
            "said",
            "p_reference",
            "p_own_choice",
            "p_reference_base",
        ],
    )


def value_bias(rows, answers, train_rows, fields=("intent", "sentiment", "urgency")):
    """Per field value: share in the fine-tuned answers vs the test references vs training.

    The value said far more often than the references hold it is the over-fit one; its
    training share says how much of it the data taught.
    """
    import pandas as pd

    said = {a["id"]: parse_answer(a["answer"]) for a in answers if a["set"] == "main_test"}
    refs = {r["id"]: json.loads(r["messages"][-1]["content"]) for r in rows}
    train = task_answers(train_rows)
    out = []
    for f in fields:
        values = {json.dumps(x[f], ensure_ascii=False) for x in [*refs.values(), *train]}
        for v in sorted(values):
            value = json.loads(v)
            out.append(
                {
                    "field": f,
                    "value": value,
                    "said": sum(same_value((s or {}).get(f), value) for s in said.values())
                    / len(said),
                    "reference": sum(same_value(x[f], value) for x in refs.values()) / len(refs),
                    "training": sum(same_value(x[f], value) for x in train) / len(train),
                }
            )
    frame = pd.DataFrame(out)
    frame["over-said"] = frame["said"] - frame["reference"]
    return frame.sort_values("over-said", ascending=False).reset_index(drop=True)


def intent_losses(scores: Sequence, rows: Sequence[dict]) -> dict[str, float]:
    """Loss per answer token (teacher-forced) of each intent's rows, from ``score_tokens``."""
    by_id = {s.id: s for s in scores}
    totals: dict[str, list[float]] = {}
    for r in rows:
        if r["id"] in by_id:
            intent = json.loads(r["messages"][-1]["content"])["intent"]
            nll_n = totals.setdefault(intent, [0.0, 0])
            nll_n[0] += by_id[r["id"]].nll
            nll_n[1] += by_id[r["id"]].n
    return {intent: nll / n for intent, (nll, n) in sorted(totals.items())}


def channel_rows(profile: Profile, per_channel: int) -> dict[str, list[dict]]:
    """Held-out eval rows per channel: each intent of the main task, identity and general QA.

    Intents come from the validation split, identity from the self-cognition eval questions,
    general from the replay questions no replay run trains on (``sft.replay_rows``).
    """
    from helpers.data import load_self_cognition
    from helpers.sft import replay_rows, validation_rows

    channels: dict[str, list[dict]] = {}
    for row in validation_rows(profile, 10**6):
        intent = json.loads(row["messages"][-1]["content"])["intent"]
        if len(channels.setdefault(f"task_{intent}", [])) < per_channel:
            channels[f"task_{intent}"].append(row)
    cognition = [r for r in load_self_cognition() if r["meta"]["split"] == "eval"]
    channels["identity"] = [{"messages": r["messages"]} for r in cognition[: per_channel * 2]]
    channels["general"] = [
        {"messages": r["messages"]} for r in replay_rows(held_out=True)[: per_channel * 2]
    ]
    return channels


def loss_levels(vocab_size: int, base_eval_loss: float, train: Mapping[str, float]):
    """The run's losses next to what they should be, each with a one-line verdict."""
    import pandas as pd

    uniform = math.log(vocab_size)
    first, final = train["first_loss"], train["final_loss"]
    final_eval = train.get("final_eval_loss")
    rows = [
        ("uniform guess ln(V)", uniform, "the ceiling: a model that knows nothing", ""),
        (
            "base model on the test answers",
            base_eval_loss,
            "where training should start",
            "ok" if base_eval_loss < uniform else "above ln(V): labels or special tokens wrong",
        ),
        (
            "first training loss",
            first,
            "near the base's loss, well under ln(V)",
            "ok" if first < uniform else "above ln(V): check the template and special tokens",
        ),
        (
            "final training loss",
            final,
            "low for a deterministic extraction task (< 0.5)",
            "ok" if final < 0.5 else "still high: under-trained (more steps or a higher lr)",
        ),
    ]
    if final_eval is not None:
        gap = final_eval - final
        verdict = "ok" if gap < max(0.1, final) else "eval far above train: over-fitting"
        rows.append(("final eval loss", final_eval, "close to the final training loss", verdict))
    return pd.DataFrame(rows, columns=["loss", "value", "should be", "verdict"]).set_index("loss")
