"""Notebook 09's tables from measured records: prompting vs fine-tuning, remedies, agreement.

Records are :func:`helpers.methods.run_method`'s (a row of a DataFrame indexed by method) and
:func:`helpers.prompting.prompting_run`'s; nothing here measures, it only lines numbers up.

    >>> remedy_table(sweep)            # each remedy against plain lora-all
    >>> agreement(live_row, stored_row) # a re-run against the stored sweep, within tolerance
"""

from __future__ import annotations

from collections.abc import Mapping

LOSSES = ("train_loss_last", "task_loss", "general_loss")  # compared live vs stored
REMEDY_PREFIXES = ("replay-", "kl-", "ewc-", "lower-lr", "lora-all-r4")


def prompting_vs_finetuning(prompted: Mapping, tuned: Mapping, tuned_record: Mapping):
    """The classic prompt-engineering-vs-fine-tuning table, each cell a measured number."""
    import pandas as pd

    rows = {
        "cost: prompt tokens per request": (prompted["prompt_tokens"], tuned["prompt_tokens"]),
        "cost: answer tokens per request": (prompted["answer_tokens"], tuned["answer_tokens"]),
        "cost: seconds per request": (
            prompted["seconds_per_request"],
            tuned["seconds_per_request"],
        ),
        "cost: training seconds (once)": (0.0, tuned_record["train_seconds"]),
        "stability: json_valid": (prompted["json_valid"], tuned["json_valid"]),
        "customisation: field_accuracy": (prompted["field_accuracy"], tuned["field_accuracy"]),
        "customisation: exact_match": (prompted["exact_match"], tuned["exact_match"]),
        "deployment: extra weights (MB)": (0.0, tuned_record["adapter_mb"]),
        "data needed: examples": (prompted["shots"], tuned_record["training_rows"]),
    }
    name = f"{prompted['shots']}-shot prompt (base)"
    return pd.DataFrame(rows, index=[name, "fine-tuned (lora-all)"]).T


def agreement(live: Mapping, stored: Mapping, tolerance: float = 0.02):
    """Live vs stored: same training data, parameters equal, each loss within ``tolerance``.

    The data row (:func:`helpers.methods.data_fingerprint`) comes first when the stored file
    has it: losses from different rows cannot agree, and that row says why. Files written
    before the fingerprint existed lack it; there the losses alone decide.
    """
    import pandas as pd

    rows = []
    data_key = "training_data_sha256"
    if isinstance(stored.get(data_key), str):
        same = live[data_key] == stored[data_key]
        rows.append(
            {"metric": data_key, "live": live[data_key], "stored": stored[data_key], "agrees": same}
        )
    rows.append(
        {
            "metric": "trainable_params",
            "live": live["trainable_params"],
            "stored": stored["trainable_params"],
            "agrees": int(live["trainable_params"]) == int(stored["trainable_params"]),
        }
    )
    for key in LOSSES:
        diff = abs(live[key] - stored[key]) / abs(stored[key])
        rows.append(
            {
                "metric": key,
                "live": live[key],
                "stored": stored[key],
                "relative_diff": diff,
                "agrees": diff <= tolerance,
            }
        )
    return pd.DataFrame(rows).set_index("metric")


def remedy_table(sweep, reference: str = "lora-all"):
    """Each remedy against ``reference``: share of its forgetting kept, and what it cost.

    Forgetting is measured two ways, each as remedy / reference (0.5: halved), NaN where the
    reference did not forget by that measure: ``probe_drop_kept`` from the few-shot probe's
    accuracy drop, ``loss_rise_kept`` from the rise of the loss on general text. On cpu-demo
    the general-text loss *falls* after fine-tuning (its reference answers are terse, as the
    course's task teaches), so there only the probe says what was forgotten.
    """
    import pandas as pd

    ref = sweep.loc[reference]
    names = [n for n in sweep.index if n.startswith(REMEDY_PREFIXES)]

    def kept(value, of):
        return value / of if of > 0 else float("nan")

    rows = []
    for name in [reference, *names]:
        row = sweep.loc[name]
        rows.append(
            {
                "method": name,
                "probe_drop": row["probe_drop"],
                "probe_drop_kept": kept(row["probe_drop"], ref["probe_drop"]),
                "general_loss_change": row["general_loss_change"],
                "loss_rise_kept": kept(row["general_loss_change"], ref["general_loss_change"]),
                "field_accuracy": row["field_accuracy"],
                "field_accuracy_cost": ref["field_accuracy"] - row["field_accuracy"],
                "task_loss_cost": row["task_loss"] - ref["task_loss"],
            }
        )
    return pd.DataFrame(rows).set_index("method").round(3)
