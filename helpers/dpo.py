"""DPO with TRL 1.16 on top of 03's SFT adapter: config, trainer, held-out rewards, memory.

The policy is 03's adapter loaded trainable on the base model. Given such a ``PeftModel`` and
no ``ref_model``, TRL's DPOTrainer copies the adapter under the name ``"ref"`` (frozen) and
computes reference log-probabilities with it: the reference *is* the SFT model, and the base
weights exist once. (A fresh adapter would instead use the base with adapters disabled.)

What TRL 1.16 / transformers 5.x already do, so this module does not repeat it:

* ``DPOConfig`` defaults to bf16 on and checkpointing on (a T4 has no bf16; fp32 on a CPU):
  both are set from the profile, as ``helpers.sft.sft_config`` does. ``max_prompt_length`` and
  ``max_completion_length`` are gone: one ``max_length`` cuts prompt + answer, from the end.
* The rewards (``beta`` x log-ratio to the reference), margins and accuracies are logged by
  the trainer; :func:`reward_table` recomputes them per held-out pair from teacher-forced
  log-probabilities (``helpers.evaluation.score_tokens``), independent of TRL's code.

    >>> policy, tokenizer = load_sft_policy(profile, adapter_dir)
    >>> trainer = make_dpo_trainer(policy, tokenizer, train_pairs, profile, "outputs/dpo", beta=0.1)
    >>> trainer.train()
    >>> reward_table(pair_logps(trainer.model, tokenizer, held_out), reference_logps, beta=0.1)
    >>> measure_memory(profile, adapter_dir, pairs_file, reference="adapter")  # child process
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from helpers.profiles import Profile
from helpers.sft import (
    apply_dtype_policy,
    default_report_to,
    precision_and_checkpointing,
    tensorboard_dir,
)

REFERENCES = ("adapter", "model")  # the "ref" adapter on the same base, or a second model


def dpo_config(profile: Profile, output_dir: str | Path, **overrides: Any):  # -> trl.DPOConfig
    """A TRL DPOConfig from the profile; any DPOConfig field can be overridden by keyword.

    Defaults for a short run on top of SFT: a fifth of SFT's steps, half its batch in
    pairs (each pair is two sequences, and the reference scores both again), a tenth of its
    learning rate (on cpu-demo half of it drove JSON validity from 0.95 to 0.76: notebook 10
    section 4), beta 0.1, the sigmoid (DPO) loss, no checkpoints.
    """
    import torch
    from trl import DPOConfig

    o = overrides.pop
    cuda = torch.cuda.is_available()
    pairs = max(1, profile.per_device_batch_size // 2)
    precision_ckpt = precision_and_checkpointing(DPOConfig, profile, overrides)
    return DPOConfig(
        output_dir=str(output_dir),
        beta=o("beta", 0.1),
        loss_type=o("loss_type", ["sigmoid"]),
        learning_rate=o("learning_rate", profile.learning_rate / 10),
        lr_scheduler_type=o("lr_scheduler_type", "cosine"),
        warmup_steps=o("warmup_steps", 0.1),
        max_steps=o("max_steps", max(4, profile.max_steps // 5)),
        per_device_train_batch_size=o("per_device_train_batch_size", pairs),
        per_device_eval_batch_size=o("per_device_eval_batch_size", pairs),
        gradient_accumulation_steps=o(
            "gradient_accumulation_steps", profile.gradient_accumulation_steps
        ),
        max_length=o("max_length", profile.max_length),
        optim=o("optim", profile.optimizer),
        logging_steps=o("logging_steps", 1),
        save_strategy=o("save_strategy", "no"),
        report_to=o("report_to", default_report_to()),
        seed=o("seed", 42),
        use_cpu=o("use_cpu", not cuda),
        dataloader_num_workers=o("dataloader_num_workers", 0),
        dataloader_pin_memory=o("dataloader_pin_memory", cuda),
        **{**precision_ckpt, **overrides},
    )


def load_sft_policy(profile: Profile, adapter_dir: str | Path):
    """(base + 03's adapter, trainable, tokenizer): the policy DPO starts from."""
    from peft import PeftModel

    from helpers.models import load_model

    base, tokenizer = load_model(profile)
    return PeftModel.from_pretrained(base, adapter_dir, is_trainable=True), tokenizer


def separate_reference(profile: Profile, adapter_dir: str | Path):
    """A second copy of the SFT model (base + adapter merged): what DPO needs without peft.

    Merged, because TRL's fused LM head patches a plain causal LM. For a 4-bit base peft
    merges by dequantizing, adding and re-quantizing (a small rounding), fine for a memory
    measurement.
    """
    from peft import PeftModel

    from helpers.models import load_model

    base, _ = load_model(profile)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()


def _dataset(pairs: Sequence[Mapping[str, Any]] | None):
    """A datasets.Dataset of TRL's three columns (extra keys would reach the collator)."""
    if pairs is None:
        return None
    from datasets import Dataset

    from helpers.preference import to_trl

    return Dataset.from_list([to_trl(p) for p in pairs])


def make_dpo_trainer(
    model,
    tokenizer,
    train_pairs: Sequence[Mapping[str, Any]],
    profile: Profile,
    output_dir: str | Path,
    *,
    eval_pairs: Sequence[Mapping[str, Any]] | None = None,
    ref_model=None,
    callbacks: Sequence = (),
    **config_overrides: Any,
):  # -> trl.DPOTrainer
    """TRL's DPOTrainer on the pairs; the reference is the "ref" copy of the adapter by default.

    ``model`` is a PeftModel from :func:`load_sft_policy` (its adapter keeps training);
    ``ref_model`` (e.g. :func:`separate_reference`) replaces the adapter copy by a second model.
    """
    from trl import DPOTrainer

    config = dpo_config(profile, output_dir, **config_overrides)
    with mock.patch.dict(os.environ, {"TENSORBOARD_LOGGING_DIR": str(tensorboard_dir(output_dir))}):
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=config,
            train_dataset=_dataset(train_pairs),
            eval_dataset=_dataset(eval_pairs),
            processing_class=tokenizer,
            callbacks=list(callbacks),
        )
    return apply_dtype_policy(trainer)  # QLoRA: the trained adapter back to fp32 (helpers.sft)


def reward_history(trainer):  # -> pandas.DataFrame
    """What the trainer logged each step: loss, rewards of chosen/rejected, margin, accuracy."""
    import pandas as pd

    keys = {
        "loss": "loss",
        "rewards/chosen": "reward_chosen",
        "rewards/rejected": "reward_rejected",
        "rewards/margins": "margin",
        "rewards/accuracies": "accuracy",
        "logps/chosen": "logp_chosen",
        "logps/rejected": "logp_rejected",
    }
    rows = [
        {"step": h["step"], **{new: h[old] for old, new in keys.items() if old in h}}
        for h in trainer.state.log_history
        if "rewards/margins" in h
    ]
    return pd.DataFrame(rows).set_index("step")


# ---------------------------------------------------------------------------- held-out rewards


def pair_logps(model, tokenizer, pairs: Sequence[Mapping[str, Any]], progress: bool = False):
    """Summed log-probability of each pair's chosen and rejected answer (teacher-forced).

    The answer's tokens and its end of turn, as the training mask scores them; under the
    adapter that is active now. Returns a DataFrame indexed by pair id: chosen, rejected.
    """
    import pandas as pd

    from helpers.evaluation import score_tokens

    conversations = [[*p["prompt"], *p[side]] for p in pairs for side in ("chosen", "rejected")]
    was_training = model.training
    model.eval()
    scores = score_tokens(model, tokenizer, conversations, progress=progress)
    model.train(was_training)
    logps = [-s.nll for s in scores]
    index = [p.get("id", str(i)) for i, p in enumerate(pairs)]
    return pd.DataFrame({"chosen": logps[0::2], "rejected": logps[1::2]}, index=index)


def reward_table(policy, reference, beta: float):  # -> pandas.DataFrame
    """Per pair: DPO's implicit rewards beta·(log π − log π_ref), the margin, and who wins.

    ``policy`` and ``reference`` are :func:`pair_logps` frames of the same pairs. ``correct``
    is TRL's reward accuracy (chosen reward > rejected reward: a tie is not correct);
    ``prefers_chosen`` asks the policy alone (log π(chosen) > log π(rejected)).
    """
    table = (policy - reference).mul(beta).rename(columns=lambda c: f"reward_{c}")
    table["margin"] = table["reward_chosen"] - table["reward_rejected"]
    table["correct"] = table["margin"] > 0
    table["prefers_chosen"] = policy["chosen"] > policy["rejected"]
    return table


def reward_summary(table) -> dict[str, float]:
    """Means over the pairs: rewards, margin, accuracy, and how often the policy ranks right."""
    return {
        "reward_chosen": float(table["reward_chosen"].mean()),
        "reward_rejected": float(table["reward_rejected"].mean()),
        "margin": float(table["margin"].mean()),
        "accuracy": float(table["correct"].mean()),
        "prefers_chosen": float(table["prefers_chosen"].mean()),
    }


# ---------------------------------------------------------------------------- memory


def _peak_memory_mb() -> tuple[float, str]:
    """This process's peak: CUDA max_memory_allocated on a GPU, else peak RSS (ru_maxrss)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "peak RSS"


def _weights_mb(*models) -> float:
    """Bytes of the distinct tensors (parameters and buffers) the models hold, in MiB."""
    seen, total = set(), 0
    for model in models:
        for tensor in [*model.parameters(), *model.buffers()]:
            key = tensor.data_ptr()
            if key not in seen:
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total / 2**20


def memory_run(profile: Profile, adapter_dir: str | Path, pairs_file: str | Path, reference: str,
               steps: int, output_dir: str | Path) -> dict[str, Any]:  # fmt: skip
    """Train ``steps`` DPO steps with one kind of reference; the weights held and the peak."""
    from helpers.preference import load_pairs

    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    policy, tokenizer = load_sft_policy(profile, adapter_dir)
    ref_model = separate_reference(profile, adapter_dir) if reference == "model" else None
    pairs = load_pairs(pairs_file)
    trainer = make_dpo_trainer(
        policy, tokenizer, pairs, profile, output_dir, ref_model=ref_model, max_steps=steps,
        report_to=[],
    )  # fmt: skip
    trainer.train()
    peak, kind = _peak_memory_mb()
    models = [trainer.model] + ([trainer.ref_model] if trainer.ref_model is not None else [])
    adapters = sorted(trainer.model.peft_config)
    return {
        "reference": reference,
        "adapters": adapters,
        "weights_mb": round(_weights_mb(*models), 1),
        "peak_mb": round(peak, 1),
        "memory_kind": kind,
        "steps": steps,
    }


def measure_memory(
    profile: Profile,
    adapter_dir: str | Path,
    pairs_file: str | Path,
    reference: str,
    steps: int = 2,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """:func:`memory_run` in a fresh Python process, so that its peak is its own.

    A process's peak RSS only grows: measured in the notebook's kernel, the second run would
    report the first one's peak. The child inherits the environment (profile, caches).
    """
    import tempfile

    output_dir = output_dir or tempfile.mkdtemp(prefix=f"dpo-memory-{reference}-")
    command = [
        sys.executable, "-m", "helpers.dpo", "--adapter", str(adapter_dir), "--pairs",
        str(pairs_file), "--reference", reference, "--steps", str(steps), "--output-dir",
        str(output_dir),
    ]  # fmt: skip
    env = {**os.environ, "COURSE_PROFILE": profile.name}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"The memory run ({reference}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Child process of :func:`measure_memory`: print one JSON line with the measurement."""
    from helpers.profiles import active_profile

    parser = argparse.ArgumentParser(description="Peak memory of DPO steps with one reference.")
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--reference", choices=REFERENCES, required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    result = memory_run(
        active_profile(), args.adapter, args.pairs, args.reference, args.steps, args.output_dir
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
