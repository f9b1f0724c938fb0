"""Notebook 09: fine-tuning methods at an equal budget, measured the same way.

θ_ft = θ_pre + Δθ; a method is a restriction on Δθ. :data:`METHODS` names the course's
configurations (the LoRA family, prefix / prompt tuning, IA3 through peft; full fine-tuning,
frozen lower layers, progressive unfreezing; forgetting remedies on top of LoRA).
:func:`run_method` trains one on the same rows, steps and batch as every other and returns a
record: trainable parameters, seconds, peak memory, task metrics on a held-out slice (04's
helpers), general-probe accuracy and the loss on held-out general text (forgetting), size.

Bottleneck adapters (Houlsby) live in the ``adapters`` library, whose releases pin
transformers 4.x (1.3.0: ``transformers~=4.57.6``), so it cannot sit beside the course's
transformers 5. Their nearest peft equivalent is LoRA on the MLP only (``lora-mlp``): a
bottleneck (r) added beside the feed-forward block, linear instead of a ReLU in the middle.

    >>> base = evaluate(model, tokenizer, profile, budget_for(profile))  # before training
    >>> record = run_method("lora-qv", profile, base, workdir="/tmp/09")
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from helpers.profiles import Profile
from helpers.resources import PeakMemory


@dataclass(frozen=True)
class Method:
    """A named configuration: what may change (kind, peft options) and how it is trained."""

    name: str
    kind: str  # "lora", "prefix", "prompt", "ia3", "full", "frozen", "progressive"
    options: dict = field(default_factory=dict)  # peft config fields (kind-specific)
    lr_factor: float = 1.0  # × the profile's learning rate
    train: dict = field(default_factory=dict)  # replay_share, kl_weight, ewc_weight, scheduler


# Learning rates: LoRA takes the profile's; full fine-tuning moves every weight, so 1/20 of it;
# soft prompts and IA3 scaling vectors start far from useful and are usually trained 3-10× higher.
METHODS = {
    m.name: m
    for m in [
        Method("lora-qv", "lora", {"target_modules": ["q_proj", "v_proj"]}),
        Method("lora-all", "lora", {"target_modules": "all-linear"}),
        Method("lora-all-r4", "lora", {"target_modules": "all-linear", "r": 4, "lora_alpha": 8}),
        Method("lora-all-alpha=r", "lora", {"target_modules": "all-linear", "alpha_per_r": 1}),
        Method("rslora", "lora", {"target_modules": "all-linear", "use_rslora": True}),
        Method("dora", "lora", {"target_modules": "all-linear", "use_dora": True}),
        Method("lora-mlp", "lora", {"target_modules": ["gate_proj", "up_proj", "down_proj"]}),
        Method("prefix", "prefix", {"num_virtual_tokens": 16}, lr_factor=5),
        Method("prompt", "prompt", {"num_virtual_tokens": 16}, lr_factor=10),
        Method("ia3", "ia3", {}, lr_factor=3),
        Method("full", "full", lr_factor=0.05),
        Method("frozen-lower", "frozen", {"trainable_share": 0.5}, lr_factor=0.05),
        Method("progressive", "progressive", {"decay": 0.8}, lr_factor=0.05),
    ]
}


def remedy(name: str, base: str = "lora-all", lr_factor: float | None = None, **train) -> Method:
    """A forgetting remedy: ``base``'s method with e.g. replay_share, kl_weight, ewc_weight."""
    method = METHODS[base]
    factor = method.lr_factor if lr_factor is None else lr_factor
    return replace(method, name=name, lr_factor=factor, train={**method.train, **train})


def sweep_configurations() -> list[Method]:
    """The full sweep: every method, then remedies on lora-all, then two more schedulers."""
    return [
        *METHODS.values(),  # lower rank: lora-all-r4
        remedy("replay-10", replay_share=0.1),
        remedy("replay-20", replay_share=0.2),
        remedy("replay-40", replay_share=0.4),
        remedy("kl-0.1", kl_weight=0.1),
        remedy("kl-1", kl_weight=1.0),
        remedy("ewc-1", ewc_weight=1.0),
        remedy("ewc-100", ewc_weight=100.0),
        remedy("lower-lr", lr_factor=0.3),
        remedy("sched-linear", scheduler="linear"),
        remedy("sched-constant", scheduler="constant"),
    ]


@dataclass(frozen=True)
class Budget:
    """What every method gets (steps, batch) and how much each evaluation reads."""

    steps: int
    batch: int
    task_rows: int  # held-out main-task rows generated and scored
    probe_rows: int  # general probe questions (few-shot continuation)
    general_rows: int  # held-out general question-answer rows: loss on general text


BUDGETS = {  # cpu-demo: ~3.7 s per step of 4 rows (03: ~7.4 s per step of 8 rows)
    "tiny": Budget(steps=4, batch=4, task_rows=4, probe_rows=6, general_rows=4),
    "cpu-demo": Budget(steps=24, batch=4, task_rows=12, probe_rows=30, general_rows=8),
}
GPU_BUDGET = Budget(steps=100, batch=8, task_rows=50, probe_rows=100, general_rows=15)


def budget_for(profile: Profile) -> Budget:
    """The equal budget every method gets on this profile."""
    return BUDGETS.get(profile.name, GPU_BUDGET)


# ---------------------------------------------------------------------------- build


def peft_config(method: Method, profile: Profile):
    """The peft config of a peft method (None for full / frozen / progressive)."""
    from peft import IA3Config, PrefixTuningConfig, PromptTuningConfig

    from helpers.sft import lora_config

    options = dict(method.options)
    if method.kind == "lora":
        r = options.pop("r", profile.lora_r)
        per_r = options.pop("alpha_per_r", None)
        if per_r is not None:
            options["lora_alpha"] = per_r * r
        return lora_config(profile, r=r, **options)
    if method.kind == "prefix":
        return PrefixTuningConfig(task_type="CAUSAL_LM", **options)
    if method.kind == "prompt":
        return PromptTuningConfig(task_type="CAUSAL_LM", **options)
    if method.kind == "ia3":  # peft's defaults (Qwen2, Gemma 3): q, v and the MLP's down_proj
        return IA3Config(task_type="CAUSAL_LM", **options)
    return None


def build(model, method: Method, profile: Profile):
    """The model with only what ``method`` may change trainable (a PeftModel for peft kinds)."""
    from peft import get_peft_model

    from helpers.method_trainer import layer_groups

    config = peft_config(method, profile)
    if config is not None:
        return get_peft_model(model, config)
    if method.kind == "frozen":  # the lower layers and the embeddings stay as pretrained
        groups = layer_groups(model)
        keep = max(1, round(method.options["trainable_share"] * (len(groups) - 2)))
        trainable = {n for _, names in groups[: 1 + keep] for n in names}
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable)
    elif method.kind in ("full", "progressive"):  # progressive: Unfreeze decides, step by step
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        raise ValueError(f"Unknown method kind {method.kind!r}; choose one of METHODS' kinds.")
    return model


def trainable_table(model) -> dict[str, Any]:
    """Trainable and total parameters, the share, and the trained weights' size in MB."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in trainable)
    total = sum(p.numel() for p in model.parameters())
    return {
        "trainable_params": n,
        "total_params": total,
        "trainable_share": n / total,
        "adapter_mb": sum(p.numel() * p.element_size() for p in trainable) / 2**20,
    }


# ---------------------------------------------------------------------------- measure


def general_texts(rows: list[dict]) -> list[str]:
    """General question-answer rows as plain "问：…\\n答：…" text (the probe's form)."""
    return [f"问：{r['messages'][-2]['content']}\n答：{r['messages'][-1]['content']}" for r in rows]


def load_test_rows(n: int) -> list[dict]:
    """The first ``n`` held-out main-task rows (the slice every evaluation here reads)."""
    from helpers.data import load_split

    return load_split("test")[:n]


def evaluate(model, tokenizer, profile: Profile, budget: Budget) -> dict[str, float]:
    """Task metrics and loss on a held-out slice, probe accuracy, loss on general text."""
    import math

    from helpers import evaluation
    from helpers.data import load_probe
    from helpers.evaluation.metrics import task_scores
    from helpers.sft import replay_rows

    model.eval()
    test = load_test_rows(budget.task_rows)
    answers = evaluation.generate_batch(
        model, tokenizer, [evaluation.prompt_messages(r, profile) for r in test], 64, progress=False
    )
    scores = task_scores(answers, [r["messages"][-1]["content"] for r in test])
    general = replay_rows(held_out=True)[: budget.general_rows]

    def loss(rows):  # mean NLL per answer token, teacher-forced (04's measure)
        conversations = [profile.style_messages(r["messages"]) for r in rows]
        scored = evaluation.score_tokens(model, tokenizer, conversations, progress=False)
        return math.log(evaluation.set_perplexity(scored))

    probe = evaluation.probe_report(model, tokenizer, load_probe()[: budget.probe_rows], False)
    return {
        "json_valid": scores["json_valid"],
        "field_accuracy": scores["field_accuracy"],
        "exact_match": scores["exact_match"],
        "task_loss": loss(test),
        "probe_accuracy": probe["accuracy"],
        "general_loss": loss(general),
    }


# ---------------------------------------------------------------------------- train


def make_method_trainer(
    model, tokenizer, rows, method: Method, profile, budget, output_dir, **overrides
):
    """A MethodTrainer for ``method`` at ``budget`` (progressive: its optimizer and callback).

    ``overrides`` go to :func:`helpers.sft.sft_config` (e.g. ``warmup_steps=0``).
    """
    from datasets import Dataset

    from helpers.method_trainer import (
        EWC,
        MethodTrainer,
        Unfreeze,
        layer_groups,
        progressive_optimizer,
    )
    from helpers.sft import replay_rows, sft_config

    t = dict(method.train)
    lr = profile.learning_rate * method.lr_factor
    epochs = t.pop("epochs", None)
    config = sft_config(
        profile,
        output_dir,
        learning_rate=lr,
        lr_scheduler_type=t.pop("scheduler", "cosine"),
        per_device_train_batch_size=budget.batch,
        gradient_accumulation_steps=1,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        **({"num_train_epochs": epochs} if epochs else {"max_steps": budget.steps}),
        **overrides,
    )
    ewc = None
    if t.get("ewc_weight"):
        ewc = EWC.estimate(model, tokenizer, general_texts(replay_rows()[:16]))
    callbacks, optimizers = [], (None, None)
    if method.kind == "progressive":  # the last group opens about 1/(groups) before the end
        every = budget.steps // (len(layer_groups(model)) + 1)
        callbacks = [Unfreeze(model, every)]
        optimizers = (progressive_optimizer(model, lr, method.options["decay"]), None)
    return MethodTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in rows]),
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=optimizers,
        kl_weight=t.get("kl_weight", 0.0),
        ewc=ewc,
        ewc_weight=t.get("ewc_weight", 0.0),
    )


def prepare(method: Method, profile: Profile, budget: Budget, workdir, rows=None, path=None):
    """(trainer, tokenizer, sizes): a fresh base model, restricted by ``method``, ready to train.

    ``rows`` default to the SFT mix (:func:`helpers.sft.training_rows`, with the method's
    replay share); ``sizes`` is :func:`trainable_table` before training (progressive: all).
    """
    import torch

    from helpers.models import load_model
    from helpers.sft import training_rows

    torch.manual_seed(0)
    model, tokenizer = load_model(profile, path=path)
    model = build(model, method, profile)
    sizes = trainable_table(model)
    if rows is None:
        rows, _ = training_rows(profile, replay_share=method.train.get("replay_share", 0.0))
    trainer = make_method_trainer(
        model, tokenizer, rows, method, profile, budget, Path(workdir) / method.name
    )
    return trainer, tokenizer, sizes


def data_fingerprint(dataset) -> str:
    """The first 12 hex digits of SHA-256 over the token ids a trainer trains on, in order.

    Two runs with the same fingerprint trained on the same rows, templated and tokenized the
    same way; a stored result is only comparable with a live run when they share it.
    """
    digest = hashlib.sha256()
    for ids in dataset["input_ids"]:
        digest.update(json.dumps(ids).encode())
    return digest.hexdigest()[:12]


def run_method(
    method: Method | str,
    profile: Profile,
    base: dict[str, float],
    workdir: str | Path,
    budget: Budget | None = None,
    model_path: str | Path | None = None,
    keep_model: bool = False,
) -> dict[str, Any]:
    """Load a fresh base model, train ``method`` at the budget, measure; one flat record.

    ``base`` is :func:`evaluate` of the untrained model: forgetting is measured against it.
    ``keep_model`` adds the trained model under "model" (else it is freed with the trainer).
    """
    method = METHODS[method] if isinstance(method, str) else method
    budget = budget or budget_for(profile)
    trainer, tokenizer, sizes = prepare(method, profile, budget, workdir, path=model_path)
    start = time.perf_counter()
    with PeakMemory() as memory:
        trainer.train()
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    after = evaluate(trainer.model, tokenizer, profile, budget)
    return {
        "method": method.name,
        "kind": method.kind,
        **method.train,
        "learning_rate": trainer.args.learning_rate,
        **sizes,
        "steps": trainer.state.global_step,
        "training_rows": len(trainer.train_dataset),
        "training_data_sha256": data_fingerprint(trainer.train_dataset),
        "train_seconds": seconds,
        "peak_memory_mb": memory.added_mb,
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        **after,
        "probe_drop": base["probe_accuracy"] - after["probe_accuracy"],
        "general_loss_change": after["general_loss"] - base["general_loss"],
        "kl_last": _mean_last(trainer.penalties, "kl"),  # the KL remedy's term, last half
        "loss_curve": losses,
        **({"model": trainer.model} if keep_model else {}),
    }


def _mean_last(penalties: list[dict], key: str) -> float | None:
    """Mean of a penalty over the second half of the steps (None when it was not used)."""
    values = [p[key] for p in penalties if key in p]
    return sum(values[len(values) // 2 :]) / len(values[len(values) // 2 :]) if values else None


def train_method(
    method: Method | str, profile: Profile, budget: Budget, workdir: str | Path, rows=None
):
    """Train ``method`` at the budget (on ``rows``, default the SFT mix); the trained trainer."""
    method = METHODS[method] if isinstance(method, str) else method
    trainer, _, _ = prepare(method, profile, budget, workdir, rows)
    trainer.train()
    return trainer


def train_epochs(profile: Profile, budget: Budget, workdir, rows: int = 16, epochs: int = 3):
    """lora-all for ``epochs`` epochs on ``rows`` training rows: loss per step, epoch of each.

    The frame's ``attrs["boundaries"]`` holds the last step of each epoch but the final one.
    """
    import math

    import pandas as pd

    from helpers.sft import training_rows

    data = training_rows(profile)[0][:rows]
    trainer = train_method(
        remedy(f"epochs-{epochs}", epochs=epochs), profile, budget, workdir, data
    )
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    per_epoch = math.ceil(rows / budget.batch)
    frame = pd.DataFrame(
        {"loss": losses, "epoch": [1 + i // per_epoch for i in range(len(losses))]}
    )
    frame.index = range(1, len(losses) + 1)
    frame.index.name = "step"
    frame.attrs["boundaries"] = [per_epoch * e for e in range(1, epochs)]
    return frame
