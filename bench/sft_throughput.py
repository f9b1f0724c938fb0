"""SFT throughput: the course's training defaults against a naive baseline, same model and data.

Run from the repository root (package installed, ``pip install -e .``):
``python bench/sft_throughput.py --shape tiny --steps 8``.
The model is built from a config with random weights (throughput does not depend on them);
the tokenizer is the course's tiny one, whose ids fit any vocabulary. Variants:

* ``course``: dynamic padding (each batch padded to its longest sample), activation
  checkpointing on GPU (as the t4/24g profiles), no packing (the course default);
* ``course+packing``: the same with ``packing=True`` (TRL's BFD packing, padding-free);
* ``naive``: every sample padded to ``max_length``, no checkpointing, no packing.

tokens/s counts real (non-padding) tokens, so padding shows up as lost throughput. QLoRA
(NF4 base) when CUDA and bitsandbytes are available, else LoRA; the table says which. MFU
is printed on GPU only; ``est_GB`` is helpers.vram's allocated-memory estimate for the same
plan (seq_len = max_length for naive, the mean real sample length otherwise; ``est_labels``
the share of those positions TRL's fused LM head projects: labelled ones on GPU, all on CPU),
comparable with ``peak_MB`` on GPU only (on CPU peak_MB is the process's peak RSS).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
from pathlib import Path

import pandas as pd
import torch

from helpers import sft
from helpers.data import load_split
from helpers.models import TINY_CONFIG, bnb_config_kwargs, build_tiny_model
from helpers.profiles import get_profile
from helpers.vram import GB, KNOWN_SHAPES, TrainingPlan, estimate_vram

SHAPES = {  # --shape name -> KNOWN_SHAPES key (None: the course's tiny Qwen2)
    "tiny": None,
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
}


def model_config(shape_name: str, tokenizer):
    """A Qwen2Config for the shape: the course tiny model's, or a Qwen2.5 model's numbers."""
    from transformers import Qwen2Config

    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if SHAPES[shape_name] is None:
        return Qwen2Config(vocab_size=len(tokenizer), bos_token_id=None, **ids, **TINY_CONFIG)
    return KNOWN_SHAPES[SHAPES[shape_name]].qwen2_config(**ids)


def build_model(config, dtype: torch.dtype, qlora: bool, profile, workdir: Path):
    """Random-weight model: in ``dtype`` (on GPU when there is one), or NF4 via a saved copy."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if not qlora:
        return model.to("cuda") if torch.cuda.is_available() else model
    path = workdir / "random-model"  # bitsandbytes quantizes while loading a checkpoint
    model.save_pretrained(path)
    del model
    quant = BitsAndBytesConfig(**bnb_config_kwargs(profile))
    return AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quant, dtype=dtype, device_map={"": 0}
    )


def run_variant(name, model, tokenizer, rows, profile, args, workdir: Path) -> dict:
    """Train ``args.steps`` steps of one variant and return its table row."""
    speed = sft.ThroughputCallback()
    overrides = {
        "max_steps": args.steps,
        "gradient_accumulation_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": args.steps,
        "disable_tqdm": True,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "optim": "adamw_torch",
    }
    if name == "naive":
        overrides.update(activation_checkpointing=False, pad_to_multiple_of=args.max_length)
    if name == "course+packing":
        overrides.update(packing=True)
    trainer = sft.make_trainer(
        model, tokenizer, rows, None, profile, workdir / name, callbacks=[speed], **overrides
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    sft.train(trainer)
    stats = speed.stats()
    real_len = speed.tokens / max(1, speed.samples)  # non-padding tokens per sample
    seq_len = args.max_length if name == "naive" else max(1, round(real_len))
    # TRL's fused LM head projects the labelled positions on CUDA, every position on CPU
    labelled = sft.dataset_label_share(trainer.train_dataset) * real_len / seq_len
    plan = dataclasses.replace(
        TrainingPlan.from_profile(profile),
        seq_len=seq_len,
        gradient_checkpointing=trainer.args.activation_checkpointing,
        optimizer="adamw_torch",
        label_share=min(1.0, labelled) if torch.cuda.is_available() else 1.0,
    )
    estimate = estimate_vram(speed.shape, plan)
    return {
        "variant": name,
        "method": "QLoRA" if profile.load_in_4bit else "LoRA",
        "ckpt": trainer.args.activation_checkpointing,
        "tokens_per_s": round(stats["tokens_per_s"], 1),
        "step_s": round(stats["step_time_s"], 3),
        "peak_MB": round(stats["peak_memory_mb"], 1),
        "memory": stats["memory_kind"],
        "MFU": None if stats["mfu"] is None else round(stats["mfu"], 4),
        "est_GB": round(estimate.allocated_bytes / GB, 3),
        "est_seq_len": seq_len,
        "est_labels": round(plan.label_share, 3),
    }


def main() -> None:
    """Parse arguments, run every variant, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=None, help="default: the profile's")
    parser.add_argument("--max-length", type=int, default=None, help="default: the profile's")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--variants", default="course,course+packing,naive")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import importlib.util

    cuda = torch.cuda.is_available()
    qlora = cuda and importlib.util.find_spec("bitsandbytes") is not None
    bf16 = cuda and torch.cuda.get_device_properties(0).major >= 8
    base = get_profile(("24g" if bf16 else "t4") if cuda else "tiny")
    dtype = "bfloat16" if bf16 else "float16" if cuda else "float32"
    profile = dataclasses.replace(
        base,
        method="qlora" if qlora else "lora",
        dtype=dtype,
        per_device_batch_size=args.batch or base.per_device_batch_size,
        max_length=args.max_length or base.max_length,
        gradient_checkpointing=cuda,
    )
    args.max_length = profile.max_length

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model())
    config = model_config(args.shape, tokenizer)
    rows = load_split("train")[: args.steps * profile.per_device_batch_size * 2]
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = (
            None if qlora else build_model(config, getattr(torch, dtype), False, profile, workdir)
        )
        for name in args.variants.split(","):
            if qlora:  # a 4-bit model cannot be deep-copied: load one per variant
                candidate = build_model(config, getattr(torch, dtype), True, profile, workdir)
            else:
                candidate = copy.deepcopy(model)  # peft wraps the model in place
            table.append(run_variant(name, candidate, tokenizer, rows, profile, args, workdir))
            del candidate
            if cuda:
                torch.cuda.empty_cache()
    print(
        f"shape={args.shape} device={torch.cuda.get_device_name() if cuda else 'cpu'} "
        f"dtype={dtype} batch={profile.per_device_batch_size} max_length={profile.max_length} "
        f"steps={args.steps} threads={torch.get_num_threads()}"
    )
    print(pd.DataFrame(table).to_string(index=False))


if __name__ == "__main__":
    main()
