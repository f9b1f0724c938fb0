"""Print VRAM estimates (GB = 2**30 bytes) for the GPU profiles and a few QLoRA plans.

Run from the repository root: ``python bench/vram_estimates.py`` (with the package installed,
``pip install -e .``). A figure-printing benchmark, not a test: compare the "allocated" column
with torch.cuda.max_memory_allocated() on a GPU. The "logits" column is TRL's fused LM head
(one logits tile over the label positions, ``labels`` in the setup column), not full logits.
"""

from __future__ import annotations

import pandas as pd

from helpers.profiles import PROFILES
from helpers.vram import (
    EXPLANATIONS,
    GB,
    KNOWN_SHAPES,
    USABLE_VRAM_GB,
    TrainingPlan,
    VramEstimate,
    estimate_for_profile,
    estimate_vram,
)


def qlora_1024(model_id: str, dtype: str = "bfloat16") -> VramEstimate:
    """QLoRA r=16 all-linear, seq 1024, batch 1, checkpointing, paged 8-bit AdamW."""
    plan = TrainingPlan(
        "qlora",
        seq_len=1024,
        batch_size=1,
        gradient_checkpointing=True,
        optimizer="paged_adamw_8bit",
        dtype=dtype,
        lora_r=16,
    )
    return estimate_vram(KNOWN_SHAPES[model_id], plan)


def row(label: str, est: VramEstimate, vram_gb: float | None) -> dict[str, object]:
    """One table row: plan summary, every component in GB, the two totals and the fit."""
    p = est.plan
    out: dict[str, object] = {
        "plan": label,
        "model": est.shape.name.split("/")[-1],
        "setup": f"{p.method} {p.dtype} {p.batch_size}x{p.seq_len} labels {p.label_share:.0%}",
        "ckpt": p.gradient_checkpointing,
        "trainable_M": est.trainable_params / 1e6,
    }
    out |= {k: getattr(est, k) / GB for k in EXPLANATIONS}
    out |= {"allocated": est.allocated_bytes / GB, "total": est.total_gb}
    out["fits"] = "" if vram_gb is None else f"{est.fits(vram_gb)} ({vram_gb:g} GB)"
    return out


def main() -> None:
    """Print the estimate table and a per-component breakdown for each GPU profile."""
    estimates = {name: estimate_for_profile(PROFILES[name]) for name in USABLE_VRAM_GB}
    rows = [row(f"profile {n}", est, USABLE_VRAM_GB[n]) for n, est in estimates.items()]
    for model_id in ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-7B-Instruct"):
        rows.append(row("qlora seq1024", qlora_1024(model_id), None))
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(pd.DataFrame(rows).round(3).to_string(index=False))
        for name, est in estimates.items():
            print(f"\n== profile {name}: {est.shape.name}, total {est.total_gb:.2f} GB ==")
            print(est.to_frame().to_string(index=False))


if __name__ == "__main__":
    main()
