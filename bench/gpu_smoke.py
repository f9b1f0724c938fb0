"""GPU smoke test: the t4 and 24g training paths end to end on a real GPU, in one script.

The first thing a session with a GPU runs (review 2026-12-helpers, section 6); its printed
table goes into the closing note. Never run in CI. Two runs, each on a randomly initialised
model of the profile's real Qwen2.5 shape (no hub access is needed) with the course's tiny
tokenizer (its ids fit any vocabulary):

* ``t4``: Qwen2.5-1.5B-Instruct's shape, 4-bit NF4 QLoRA, fp16 autocast with GradScaler,
  fp32 LoRA weights, TRL's fused LM head in fp16, batch 4 x 4 accumulation, max_length 1024,
  paged_adamw_8bit; on an Ampere/Hopper GPU as well as a T4;
* ``24g``: Qwen2.5-7B-Instruct's shape, the same in bf16, batch 2 x 8, max_length 2048.

Each run trains ``--steps`` (30) optimizer steps through ``helpers.sft.make_trainer`` and
``helpers.sft.train`` on ``helpers.sft.training_rows(profile)`` and measures:

* loss: finite at every step, and the mean of the last 5 logged losses below the first 5;
* ``helpers.sft.reload_check`` at atol 1e-2: the saved adapter on a freshly loaded 4-bit base
  against the trained model (max logit difference);
* peak ``torch.cuda.max_memory_allocated`` in training against
  ``helpers.vram.estimate_for_profile`` (both, and the estimate/measured ratio);
* tokens/s and MFU from ``helpers.sft.ThroughputCallback``;
* greedy replies to held-out prompts from ``helpers.evaluation.generate_batch`` (repetition
  penalty 1.0) against ``model.generate`` with the model's own generation_config carrying
  Qwen2.5's defaults (repetition_penalty 1.1 / 1.05, temperature 0.7, top_p 0.8, top_k 20,
  do_sample=False): how many replies the defaults change. Random weights: the count shows
  that the defaults act, not how much they change a trained model's answers.

The learning rate is 1e-3 rather than the profiles' 2e-4 (``--learning-rate``): random weights
learn slowly, and a falling loss is what shows that the optimizer steps are not skipped. Sample
lengths are the tiny tokenizer's (about 140 tokens per sample on the course data), not Qwen's:
memory and speed are measured at those lengths. A failed check does not stop the next run: the
table ends with FAILED lines and the script exits with status 1.

On a GPU machine, from the repository root. The machine needs no network, but it needs the
course's libraries at constraints.txt's versions: trl, datasets and bitsandbytes are often
missing from GPU images (and transformers/peft at other versions), so carry their wheels and
install them first. ``PYTHONPATH=.`` stands in for ``pip install -e .`` there::

    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/gpu_smoke.py --out outputs/gpu_smoke.json

Time: about 5-8 minutes on one H200 or A100 (an estimate, not yet measured), most of it saving
and loading the 7B model's 15 GB of random bf16 weights; a T4 needs ``--only t4``. Check it
without a GPU (2.5 minutes on 2 busy cores)::

    COURSE_PROFILE=tiny python bench/gpu_smoke.py --cpu-dry-run

The dry run takes the same code path with the course's tiny Qwen2 in float32 (4-bit NF4 through
bitsandbytes' CPU backend) for 3 steps, and names the CUDA-only parts it skips.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import importlib.metadata
import importlib.util
import json
import math
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

from helpers import rehearsal, sft
from helpers.evaluation import eval_sets, generate_batch, prompt_messages
from helpers.models import build_tiny_model, load_model
from helpers.profiles import Profile, get_profile
from helpers.vram import (
    GB,
    KNOWN_SHAPES,
    ModelShape,
    TrainingPlan,
    estimate_for_profile,
    estimate_vram,
)

RUNS = ("t4", "24g")
GPU_STEPS, DRY_RUN_STEPS = 30, 3
LEARNING_RATE = 1e-3  # random weights: 5x the profiles' 2e-4, so 30 steps visibly lower the loss
RELOAD_ATOL = 1e-2  # 16-bit logits (helpers.sft.reload_check's advice for GPU models)
N_PROMPTS, MAX_NEW_TOKENS = 6, 48  # prompts (one generate_batch batch: <= 16), reply length
DRY_RUN = {  # what the CPU dry run changes in a GPU profile, and why
    "device": ("cpu", "no CUDA"),
    "dtype": ("float32", "CPU autocast has no fp16 GradScaler; float32 for both runs"),
    "optimizer": ("adamw_torch", "paged optimizers need CUDA unified memory"),
}
CUDA_ONLY = (  # what the dry run cannot measure
    "torch.cuda.max_memory_allocated (peak_GB is empty; the estimate is still computed)",
    "MFU (needs a GPU's peak FLOP/s)",
    "fp16/bf16 autocast and fp16 GradScaler (float32 here)",
    "paged_adamw_8bit (adamw_torch here)",
    "TRL's fused LM head on labelled positions only (on CPU it projects every position)",
)


def qwen25_config(model_id: str, tokenizer):  # -> transformers.Qwen2Config
    """Qwen2.5's config.json numbers for ``model_id`` (KNOWN_SHAPES), the tiny tokenizer's ids."""
    return KNOWN_SHAPES[model_id].qwen2_config(  # vocab 151936 / 152064; the tiny ids are < 2048
        rms_norm_eps=1e-6,  # the rest: literal values from both models' config.json
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_random_base(config, tokenizer, profile: Profile, path: Path) -> Path:
    """Random weights of ``config`` in the profile's dtype, saved with the tokenizer at ``path``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(profile.device):  # initialising 7B parameters on the GPU takes seconds
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, profile.dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)  # bitsandbytes quantizes while loading a checkpoint
    tokenizer.save_pretrained(path)
    del model
    free_memory()
    return path


def free_memory() -> float:
    """Collect garbage and empty the CUDA cache; returns GB still allocated (0.0 on CPU)."""
    gc.collect()
    if not torch.cuda.is_available():
        return 0.0
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated() / GB


def run_profile(name: str, dry_run: bool, steps: int, lr: float) -> tuple[Profile, list[str]]:
    """The profile a run trains with, and each change from the real one, with the reason."""
    profile = get_profile(name)
    changes = {
        "max_steps": (steps, "a smoke test"),
        "learning_rate": (lr, "random weights learn slowly"),
    }
    if dry_run:
        changes.update(DRY_RUN)
        if importlib.util.find_spec("bitsandbytes") is None:
            changes["method"] = ("lora", "bitsandbytes is not installed")
    subs = [f"{k}: {getattr(profile, k)} -> {v} ({why})" for k, (v, why) in changes.items()]
    return dataclasses.replace(profile, **{k: v for k, (v, _) in changes.items()}), subs


def loss_trend(losses: list[float]) -> dict:
    """First/last loss, the means of the first and last k (<= 5) logged, finite and falling."""
    losses = losses or [math.nan]  # nothing logged fails both checks
    k = max(1, min(5, len(losses) // 2))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return {
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "window": k,
        "first_mean": first,
        "last_mean": last,
        "loss_finite": all(math.isfinite(x) for x in losses),
        "loss_falling": last < first,
    }


def compare_decoding(name: str, model, tokenizer, conversations: list[list[dict]]) -> dict:
    """Greedy replies (penalty 1.0) against the model's own config with Qwen2.5's defaults."""
    greedy = generate_batch(model, tokenizer, conversations, MAX_NEW_TOKENS, progress=False)
    defaults = {
        **rehearsal.QWEN_SAMPLING,  # temperature 0.7, top_p 0.8, top_k 20
        "do_sample": False,  # greedy, so only the repetition penalty can change a reply
        "repetition_penalty": rehearsal.QWEN_REPETITION_PENALTY[name],
    }
    unused = model.get_base_model().generation_config.update(**defaults)
    if unused:
        raise ValueError(f"GenerationConfig has no fields {sorted(unused)}")
    config = copy.deepcopy(model.generation_config)  # the model's own, with Qwen's defaults
    config.update(max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
    own = generate_batch(
        model, tokenizer, conversations, MAX_NEW_TOKENS, progress=False, generation_config=config
    )
    changed = sum(a != b for a, b in zip(greedy, own, strict=True))
    return {
        "answers_changed": changed,
        "answers_total": len(greedy),
        "qwen_defaults": defaults,
        "examples": [
            {"greedy": a, "defaults": b} for a, b in zip(greedy[:2], own[:2], strict=True)
        ],
    }


def reload(profile: Profile, base_dir: Path, trainer, adapter: Path, prompts: list[str]) -> dict:
    """reload_check on a freshly loaded base; a mismatch is recorded, not raised."""
    fresh, _ = load_model(profile, base_dir)  # 4-bit again for QLoRA; peft edits it in place
    try:
        report = sft.reload_check(
            fresh,
            adapter,
            trainer.processing_class,
            prompts,
            trained_model=trainer.model,
            atol=RELOAD_ATOL,
            copy_base=False,
        )
        result = {"reload_max_diff": report["max_diff_vs_trained"], "reload_error": None}
        result["reload_diff_vs_base"] = report["max_diff_vs_base"]
    except AssertionError as exc:  # the number is in the message: "... by 3.1e-02 > atol=..."
        found = re.search(r"by (\S+) > atol", str(exc))
        result = {"reload_max_diff": float(found[1]) if found else None, "reload_error": str(exc)}
    del fresh
    return result


def run_one(profile: Profile, args: argparse.Namespace, workdir: Path) -> dict:
    """Build, train, save, reload-check and compare decoding for one profile; its result row."""
    from transformers import AutoConfig, AutoTokenizer

    tiny = build_tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = (
        AutoConfig.from_pretrained(tiny)
        if args.cpu_dry_run
        else qwen25_config(profile.model_id, tokenizer)
    )
    shape = ModelShape.from_config(config)  # the model trained: a tiny one in a dry run
    base_dir = save_random_base(config, tokenizer, profile, workdir / "base")
    model, tokenizer = load_model(profile, base_dir)  # the course's loader: NF4 for QLoRA

    rows, source = sft.training_rows(profile)
    per_step = profile.per_device_batch_size * profile.gradient_accumulation_steps
    speed = sft.ThroughputCallback()
    trainer = sft.make_trainer(
        model,
        tokenizer,
        rows[: args.steps * per_step],  # what the steps read; TRL need not tokenize the rest
        None,
        profile,
        workdir / "run",
        callbacks=[speed],
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=profile.device == "cpu",
    )
    sft.train(trainer)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    stats = speed.stats()
    adapter = sft.save_adapter(trainer, workdir / "adapter")

    estimate = estimate_for_profile(profile, shape=shape)
    mean_len = speed.tokens / max(1, speed.samples)  # real (non-padding) tokens per sample
    plan = dataclasses.replace(TrainingPlan.from_profile(profile), seq_len=max(1, round(mean_len)))
    mean_len_estimate = estimate_vram(shape, plan)  # padding-free: a lower bound
    peak = stats["peak_memory_mb"] * 2**20 if profile.device == "cuda" else None  # bytes
    ratio = None if peak is None else estimate.compare_with_measured(round(peak))["ratio"]

    held_out = eval_sets(profile)["main_test"][:N_PROMPTS]
    conversations = [prompt_messages(r, profile) for r in held_out]
    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]
    return {
        "dtype": profile.dtype,
        "method": profile.method,
        "optimizer": profile.optimizer,
        "steps": trainer.state.global_step,
        **loss_trend(losses),
        **reload(profile, base_dir, trainer, adapter, texts),
        "peak_GB": None if peak is None else peak / GB,
        "est_GB": estimate.allocated_bytes / GB,
        "est_over_measured": ratio,
        "est_GB_mean_len": mean_len_estimate.allocated_bytes / GB,
        "mean_tokens_per_sample": mean_len,
        "tokens_per_s": stats["tokens_per_s"],
        "MFU": stats["mfu"],
        **compare_decoding(profile.name, trainer.model, tokenizer, conversations),
        "rows_from": source,
    }


def failures(row: dict) -> list[str]:
    """What went wrong in one run, as lines for the summary."""
    if "error" in row:
        return [f"{row['profile']}: {row['error']}"]
    checks = {
        "loss not finite": not row["loss_finite"],
        f"loss not falling ({row['first_mean']:.4f} -> {row['last_mean']:.4f})": not row[
            "loss_falling"
        ],
        f"reload_check: {row['reload_error']}": row["reload_error"] is not None,
    }
    return [f"{row['profile']}: {what}" for what, bad in checks.items() if bad]


def versions() -> dict:
    """Installed versions of the libraries the training path uses."""
    found = {}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def main() -> None:
    """Parse arguments, run each profile (one failing does not stop the next), print, save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=RUNS, default=None, help="run one profile")
    parser.add_argument("--steps", type=int, default=None, help="30 on GPU, 3 in a dry run")
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_smoke.json"))
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny Qwen2, float32, CPU")
    args = parser.parse_args()
    args.steps = args.steps or (DRY_RUN_STEPS if args.cpu_dry_run else GPU_STEPS)
    cuda = torch.cuda.is_available()
    if not args.cpu_dry_run and not cuda:
        sys.exit("No CUDA device: run this on a GPU machine, or check it here with --cpu-dry-run.")
    if not args.cpu_dry_run and importlib.util.find_spec("bitsandbytes") is None:
        sys.exit("bitsandbytes is not installed: carry its wheel to this machine and install it.")
    device = "cpu (dry run)" if args.cpu_dry_run else torch.cuda.get_device_name()
    print(f"device: {device}; {versions()}")
    if args.cpu_dry_run:
        print("CPU dry run: skipped (CUDA only):\n  " + "\n  ".join(CUDA_ONLY))

    rows = []
    for name in (args.only,) if args.only else RUNS:
        profile, subs = run_profile(name, args.cpu_dry_run, args.steps, args.learning_rate)
        print(f"\n=== {name} ===\n" + "".join(f"  changed {line}\n" for line in subs), flush=True)
        row, started = {"profile": name, "substitutions": subs}, time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"gpu_smoke_{name}_") as tmp:
            try:
                row.update(run_one(profile, args, Path(tmp)))
            except Exception as exc:  # record it; the next profile still runs
                traceback.print_exc()
                row["error"] = f"{type(exc).__name__}: {exc}"
        # outside the except block: a live traceback would keep the model's tensors alive
        row.update(GB_left_after_free=free_memory(), wall_s=time.perf_counter() - started)
        rows.append(row)

    columns = {  # table heading -> row key
        "profile": "profile",
        "dtype": "dtype",
        "steps": "steps",
        "loss_first": "first_mean",
        "loss_last": "last_mean",
        "reload_diff": "reload_max_diff",
        "peak_GB": "peak_GB",
        "est_GB": "est_GB",
        "est/peak": "est_over_measured",
        "tokens/s": "tokens_per_s",
        "MFU": "MFU",
        "changed": "answers_changed",
        "wall_s": "wall_s",
    }
    table = pd.DataFrame([{h: r.get(k) for h, k in columns.items()} for r in rows])
    table["changed"] = [
        f"{r['answers_changed']}/{r['answers_total']}" if "answers_total" in r else None
        for r in rows
    ]
    problems = [line for row in rows for line in failures(row)]
    print(f"\ngpu_smoke on {device}, {args.steps} steps, learning rate {args.learning_rate:g}:")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(
        "loss_first/last: means of the first/last 5 logged losses (fewer steps: half of them); "
        "reload_diff: max |logit| difference, reloaded vs trained; est/peak: the estimate over "
        "max_memory_allocated; changed: greedy replies that Qwen2.5's generation defaults change"
        + ("; peak_GB, est/peak and MFU: CUDA only, skipped" if args.cpu_dry_run else "")
    )
    print("\n".join(["FAILED:", *problems]) if problems else "all checks passed")

    result = {
        "device": device,
        "dry_run": args.cpu_dry_run,
        "skipped_cuda_only": list(CUDA_ONLY) if args.cpu_dry_run else [],
        "steps": args.steps,
        "learning_rate": args.learning_rate,
        "versions": versions(),
        "runs": rows,
        "failures": problems,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    print(f"written: {args.out}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
