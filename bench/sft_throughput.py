"""SFT throughput: TRL 1.16's trainer against the course's, same model, data and batches.

On a CPU, TRL's fused LM head projects every position (prompt and padding too) and runs the
head's product again in backward; the course's trainer (``helpers.sft_trainer``) projects only
the positions that carry a label. Both run here in one process on the same samples, in
alternation (trl, course, trl, course, ...), so a busy neighbour slows both alike; so do two
ways to waste less padding with the course's trainer: transformers' group_by_length sampler
and TRL's padding-free batches. Printed per variant: real tokens/s and the ratio to TRL, the
peak memory a step adds above the model, and the useful-FLOP rate against this machine's fp32
matrix-multiply peak, measured in the same run.

    python bench/sft_throughput.py --profile cpu-demo --steps 4 --rounds 3   # 262k vocabulary
    python bench/sft_throughput.py --profile tiny
    python bench/sft_throughput.py --shape Qwen/Qwen2.5-1.5B-Instruct --profile t4   # on a GPU

Useful FLOPs are the work a step needs (``helpers.sft.flops_per_token``): 4N per token for the
frozen body and the LM head at label positions only, 6N for the LoRA weights, attention; the
head's recompute and every unlabelled projection are waste, not work. A step is
``training_step`` (forward and backward) over one micro-batch; the optimizer is not timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from datetime import date

import torch

from helpers import models, sft
from helpers.cpu import cpu_model
from helpers.profiles import get_profile
from helpers.resources import PeakMemory
from helpers.vram import KNOWN_SHAPES, ModelShape


def matmul_peak(size: int = 2048, seconds: float = 3.0) -> float:
    """This machine's fp32 matrix-multiply rate in FLOP/s (square ``size`` products)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    a @ b  # warm-up: thread pools, kernels
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start)


def load(profile, shape_id: str | None, workdir: str):
    """(model, tokenizer): the profile's own model, or random weights of a known shape."""
    if shape_id is None:
        return models.load_model(profile)
    from transformers import AutoModelForCausalLM

    _, tokenizer = models.load_model(get_profile("tiny"))  # ids fit any vocabulary
    config = KNOWN_SHAPES[shape_id].qwen2_config(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(workdir)
    tokenizer.save_pretrained(workdir)
    return models.load_model(profile, path=workdir)


def batches_of(trainer, subset: list[int], size: int, how: str) -> list[dict]:
    """The subset's samples in micro-batches: "random" (TRL's default), "by length"
    (transformers' group_by_length sampler) or "padding-free" (TRL's collator, one row each)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    data, collate = trainer.train_dataset, trainer.data_collator
    order = subset
    if how == "by length":  # the first batches of a training epoch's order (its mega-batches)
        lengths = [len(ids) for ids in data["input_ids"]]
        generator = torch.Generator().manual_seed(0)
        order = list(LengthGroupedSampler(size, lengths=lengths, generator=generator))
        order = order[: len(subset)]
    if how == "padding-free":
        collate = dataclasses.replace(collate, padding_free=True)
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    return [collate([data[i] for i in chunk]) for chunk in chunks]


def real_tokens(batch: dict) -> int:
    """Tokens that are not padding (a padding-free batch has no attention mask and none)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu-demo", help="tiny, cpu-demo, t4, 24g")
    parser.add_argument("--shape", choices=sorted(KNOWN_SHAPES), help="random weights of it")
    parser.add_argument("--steps", type=int, default=4, help="micro-batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    profile = dataclasses.replace(get_profile(args.profile), gradient_accumulation_steps=1)
    size = profile.per_device_batch_size
    rows, _ = sft.training_rows(profile)
    peak_before = matmul_peak()
    trainers, workdir = {}, tempfile.mkdtemp()
    for name in ("trl", "course"):  # one model each: peft puts its adapter into the model
        model, tokenizer = load(profile, args.shape, workdir)
        trainers[name] = sft.make_trainer(
            model, tokenizer, rows, None, profile, workdir, course_loss=name == "course",
            report_to=[],
        )  # fmt: skip
    # the same samples for every variant; only the trainer and how they are batched differ
    pool = len(trainers["trl"].train_dataset)
    subset = torch.randperm(pool, generator=torch.Generator().manual_seed(0))[: args.steps * size]
    subset = subset.tolist()
    variants = {  # name: (trainer, batches)
        "trl (random batches)": ("trl", batches_of(trainers["trl"], subset, size, "random")),
        "course loss (random batches)": (
            "course",
            batches_of(trainers["trl"], subset, size, "random"),
        ),
        "course, grouped by length": (
            "course",
            batches_of(trainers["trl"], subset, size, "by length"),
        ),
        "course, padding-free": (
            "course",
            batches_of(trainers["trl"], subset, size, "padding-free"),
        ),
    }
    seconds = {name: [] for name in variants}
    memory = {name: 0.0 for name in variants}
    for r in range(args.rounds + 1):  # round 0 warms up and is not counted
        for name, (trainer_name, batches) in variants.items():
            trainer = trainers[trainer_name]
            with PeakMemory() as rss:
                start = time.perf_counter()
                for batch in batches:
                    count = (batch["labels"][:, 1:] != -100).sum()
                    trainer.training_step(trainer.model, dict(batch), count)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()  # CUDA runs asynchronously: wait for the steps
                elapsed = time.perf_counter() - start
            if r:
                seconds[name].append(elapsed)
                memory[name] = max(memory[name], rss.added_mb)
                print(f"round {r}/{args.rounds} {name}: {elapsed:.1f} s", flush=True)
    peak = (peak_before + matmul_peak()) / 2
    batches = variants["trl (random batches)"][1]
    labels = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    tokens = sum(real_tokens(b) for b in batches)
    lm = trainers["course"].model.get_base_model()
    n_lora = sum(p.numel() for p in trainers["course"].model.parameters() if p.requires_grad)
    shape = ModelShape.from_config(lm.config)
    fpt = sft.flops_per_token(shape, n_lora, round(tokens / len(subset)), labels / tokens)
    print(f"\n{cpu_model()}, {torch.get_num_threads()} threads, {date.today()}")
    print(
        f"{args.profile} ({args.shape or lm.config.model_type}), {len(subset)} samples in "
        f"micro-batches of {size}: {tokens} real tokens, {labels} labels ({labels / tokens:.0%}); "
        f"fp32 matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    columns = ["trainer", "positions (padding)", "tokens/s", "x trl", "added memory MB"]
    columns += ["useful GFLOP/s", "of fp32 peak"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for name, (_, batches) in variants.items():
        positions = sum(b["input_ids"].numel() for b in batches)
        real = sum(real_tokens(b) for b in batches)  # other samples when grouped by length
        rate = real / statistics.median(seconds[name])
        base = base or rate
        useful = rate * fpt
        print(
            f"| {name} | {positions} ({1 - real / positions:.0%}) | {rate:.1f} | "
            f"{rate / base:.2f} | {memory[name]:.0f} | {useful / 1e9:.1f} | {useful / peak:.0%} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
