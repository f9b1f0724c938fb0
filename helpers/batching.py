"""GPU batch geometry from the data: ``max_length`` from the lengths, micro-batches that fit.

The GPU profiles ship with room for 1-2k-token samples (t4: ``max_length`` 1024, 4 samples x 4
accumulation steps, activation checkpointing on). The course's samples are ~200 tokens. Sized
for them, the same effective batch fits without checkpointing, which with a frozen base is up
to 1.5x less compute (the backward pass of a frozen model is about one forward; checkpointing
adds another). :func:`fit_batches`:

* ``max_length``: p99 of the templated training samples (01's length report, on the rows this
  run trains), rounded up to a multiple of 64, never above the profile's;
* micro-batch x accumulation: every split of the profile's effective batch, each with and
  without checkpointing, estimated by :mod:`helpers.vram`; the largest micro-batch that fits
  without checkpointing wins, checkpointing only when nothing fits without it.

On a CPU profile nothing changes (memory is not what limits a CPU). A rehearsal of a GPU
profile (:mod:`helpers.rehearsal`) chooses for the GPU it stands for, with its rehearsed
effective batch, so CI runs this code.

    >>> fit = fit_batches(profile, rows, tokenizer)
    >>> fit.candidates  # every split with its estimated peak, the chosen one marked
    >>> profile = fit.profile  # the profile with the chosen geometry
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from helpers.profiles import Profile, get_profile

ROUND_TO = 64  # max_length is rounded up to a multiple of this
USABLE_SHARE = 0.85  # of the GPU's memory: the estimate is not yet checked on every GPU
GEOMETRY = ("max_length", "per_device_batch_size", "gradient_accumulation_steps")


@dataclasses.dataclass(frozen=True)
class BatchFit:
    """The chosen geometry and the evidence for it."""

    profile: Profile  # the input profile with max_length, batches and checkpointing chosen
    before: Profile
    p99: float  # tokens, chat template applied
    truncated_share: float  # of the training samples, at the chosen max_length
    vram_gb: float | None  # GiB the choice was made for (None: a CPU profile)
    candidates: Any  # pandas.DataFrame: one row per split; empty on a CPU profile

    def changes(self):  # -> pandas.DataFrame
        """Each geometry field: the profile's value, the chosen one, and why."""
        import pandas as pd

        chosen = self.candidates[self.candidates["chosen"]] if len(self.candidates) else None
        truncated = f"p99 = {self.p99:.0f} tokens; {self.truncated_share:.1%} of samples truncated"
        why = {
            "max_length": f"{truncated} (rounded up to {ROUND_TO}s)"
            if chosen is not None
            else f"CPU: the profile's; {truncated}",
        }
        if chosen is not None:
            estimate = f"estimated {chosen['estimated_gb'].iloc[0]:.1f} GB"
            budget = f"{USABLE_SHARE:.0%} of {self.vram_gb:g} GB"
            why["per_device_batch_size"] = f"the largest that fits: {estimate} of {budget}"
            why["gradient_accumulation_steps"] = "keeps the effective batch"
            why["gradient_checkpointing"] = (
                "needed: nothing fits without it"
                if self.profile.gradient_checkpointing
                else "not needed: the estimate fits without it"
            )
        fields = (*GEOMETRY, "gradient_checkpointing")
        return pd.DataFrame(
            {
                "profile": {f: getattr(self.before, f) for f in fields},
                "chosen": {f: getattr(self.profile, f) for f in fields},
                "why": {
                    f: why.get(f, "CPU: the profile's (memory is not the limit)") for f in fields
                },
            }
        )


def _gpu_memory_gb(profile: Profile) -> float:
    """This machine's GPU memory, or (rehearsal) that of the GPU the profile stands for."""
    from helpers.env import gpu_info
    from helpers.vram import USABLE_VRAM_GB

    gpu = gpu_info()
    return gpu.vram_gb if gpu is not None else USABLE_VRAM_GB[profile.name]


def candidates(profile: Profile, max_length: int, vram_gb: float):  # -> pandas.DataFrame
    """Every micro-batch x accumulation split of the effective batch, +/- checkpointing."""
    import pandas as pd

    from helpers.vram import KNOWN_SHAPES, TrainingPlan, estimate_vram

    real = get_profile(profile.name)  # a rehearsal estimates for the real GPU's precision
    plan = dataclasses.replace(TrainingPlan.from_profile(real), seq_len=max_length)
    effective = profile.per_device_batch_size * profile.gradient_accumulation_steps
    rows = []
    for micro in (m for m in range(effective, 0, -1) if effective % m == 0):
        for checkpointing in (False, True):
            trial = dataclasses.replace(
                plan, batch_size=micro, gradient_checkpointing=checkpointing
            )
            gb = estimate_vram(KNOWN_SHAPES[real.model_id], trial).total_gb
            rows.append((micro, effective // micro, checkpointing, round(gb, 2)))
    table = pd.DataFrame(
        rows, columns=["micro_batch", "accumulation", "checkpointing", "estimated_gb"]
    )
    table["fits"] = table["estimated_gb"] <= USABLE_SHARE * vram_gb
    fitting = table[table["fits"]].sort_values(
        ["checkpointing", "micro_batch"], ascending=[True, False]
    )
    if fitting.empty:
        raise RuntimeError(
            f"No split of the effective batch {effective} fits {vram_gb:g} GB even with "
            f"checkpointing at max_length {max_length}; the smallest estimate is "
            f"{table['estimated_gb'].min():.1f} GB. Use a GPU with more memory or shorten "
            "the samples (the system prompt is most of each one)."
        )
    table["chosen"] = table.index == fitting.index[0]
    return table


def fit_batches(profile: Profile, rows: list[dict], tokenizer, vram_gb: float | None = None):
    """The profile's batch geometry sized for ``rows`` (see the module docstring)."""
    import pandas as pd

    from helpers.data import length_stats, token_lengths  # 01's length report, these rows

    lengths = token_lengths(rows, tokenizer)
    p99 = length_stats(lengths, profile.max_length)["p99"]
    if profile.device == "cpu" and not profile.rehearsal:
        share = length_stats(lengths, profile.max_length)["truncated_share"]
        return BatchFit(profile, profile, p99, share, None, pd.DataFrame())
    max_length = min(profile.max_length, ROUND_TO * math.ceil(p99 / ROUND_TO))
    vram_gb = _gpu_memory_gb(profile) if vram_gb is None else vram_gb
    table = candidates(profile, max_length, vram_gb)
    micro, accumulation, checkpointing = table.loc[
        table["chosen"], ["micro_batch", "accumulation", "checkpointing"]
    ].iloc[0]
    chosen = dataclasses.replace(
        profile,
        max_length=max_length,
        per_device_batch_size=int(micro),
        gradient_accumulation_steps=int(accumulation),
        gradient_checkpointing=bool(checkpointing),
    )
    share = length_stats(lengths, max_length)["truncated_share"]
    return BatchFit(chosen, profile, p99, share, vram_gb, table)
