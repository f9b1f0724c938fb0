"""Token-length statistics of chat samples, counted after the model's chat template is applied.

Lengths are what TRL trains on: ``apply_chat_template`` of the whole conversation, special
tokens and turn markers included. ``length_report`` adds how much ``max_length`` would cut and
which share of the tokens carries loss under each masking mode (see ``helpers.data.lossmask``).

    >>> from helpers.data.stats import length_report, plot_length_histogram
    >>> report = length_report(rows, tokenizer, max_length=512)
    >>> print(report)  # count, mean, p50..p99, max, truncated share, loss-token shares
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tqdm.auto import tqdm

from .lossmask import loss_mask, sample_messages, training_template

PROGRESS_MIN = 1000  # show a progress bar from this many samples on (progress=None)


def _bar(items: Sequence, desc: str, progress: bool | None):
    """``items`` wrapped in a tqdm bar when asked, or when there are many."""
    show = len(items) >= PROGRESS_MIN if progress is None else progress
    return tqdm(items, desc=desc, unit=" samples", disable=not show, leave=False)


def token_lengths(
    samples: Sequence[Mapping[str, Any]], tokenizer, progress: bool | None = None
) -> list[int]:
    """Tokens per sample with the chat template applied, as TRL tokenizes ``messages``."""
    bar = _bar(samples, "token lengths", progress)
    encoded = (tokenizer.apply_chat_template(sample_messages(s), return_dict=True) for s in bar)
    return [len(e["input_ids"]) for e in encoded]


@dataclass(frozen=True)
class LengthReport:
    """Length distribution, truncation at ``max_length`` and loss-token shares of a dataset."""

    count: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: int
    max_length: int
    truncated_share: float  # samples longer than max_length / count
    truncated_count: int
    tokens_cut: int  # tokens beyond max_length, summed over samples
    tokens_cut_share: float  # tokens_cut / all tokens
    assistant_loss_share: float | None = None  # None: the template cannot mask assistant turns
    last_turn_loss_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for a DataFrame or JSON)."""
        return asdict(self)

    def __str__(self) -> str:
        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.1%}"

        return (
            f"{self.count} samples, tokens: mean {self.mean:.1f}, p50 {self.p50:.0f}, "
            f"p90 {self.p90:.0f}, p95 {self.p95:.0f}, p99 {self.p99:.0f}, max {self.max}\n"
            f"max_length={self.max_length}: {self.truncated_count} truncated "
            f"({pct(self.truncated_share)}), {self.tokens_cut} tokens cut "
            f"({pct(self.tokens_cut_share)})\n"
            f"tokens carrying loss: all 100%, assistant_only {pct(self.assistant_loss_share)}, "
            f"last_turn {pct(self.last_turn_loss_share)}"
        )


def length_stats(lengths: Sequence[int], max_length: int) -> dict[str, Any]:
    """Percentiles (numpy's linear interpolation) and truncation figures of a list of lengths."""
    import numpy as np

    if not lengths:
        raise ValueError("No lengths given: the sample list is empty.")
    arr = np.asarray(lengths, dtype=np.int64)
    over = arr[arr > max_length]
    p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99]).tolist()
    cut = int((over - max_length).sum())
    return {
        "count": len(arr),
        "mean": float(arr.mean()),
        "p50": p50,
        "p90": p90,
        "p95": p95,
        "p99": p99,
        "max": int(arr.max()),
        "max_length": max_length,
        "truncated_share": len(over) / len(arr),
        "truncated_count": len(over),
        "tokens_cut": cut,
        "tokens_cut_share": cut / int(arr.sum()) if arr.sum() else 0.0,
    }


def length_report(
    samples: Sequence[Mapping[str, Any]],
    tokenizer,
    max_length: int,
    progress: bool | None = None,
) -> LengthReport:
    """Length statistics plus loss-token shares (mask sum / length sum, before truncation)."""
    try:
        training_template(tokenizer)
        assistant_ok = True
    except ValueError:
        assistant_ok = False
    lengths: list[int] = []
    assistant = last = 0
    for i, sample in enumerate(_bar(samples, "length report", progress)):
        try:
            if assistant_ok:
                ids, mask = loss_mask(sample, tokenizer, "assistant_only")
                assistant += sum(mask)
            else:
                ids, _ = loss_mask(sample, tokenizer, "all")
            last += sum(loss_mask(sample, tokenizer, "last_turn")[1])
        except ValueError as exc:
            raise ValueError(f"sample {i}: {exc}") from exc
        lengths.append(len(ids))
    stats = length_stats(lengths, max_length)
    total = sum(lengths)
    return LengthReport(
        **stats,
        assistant_loss_share=assistant / total if assistant_ok else None,
        last_turn_loss_share=last / total,
    )


def plot_length_histogram(
    lengths: Sequence[int], max_length: int, ax: Any = None, bins: int = 40
) -> Any:
    """Histogram of token lengths, a line at ``max_length``, the truncated share in the title."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    stats = length_stats(lengths, max_length)
    ax.hist(lengths, bins=bins, color="#4c72b0", alpha=0.85)
    ax.axvline(max_length, color="#c44e52", linestyle="--", label=f"max_length = {max_length}")
    ax.axvline(stats["p95"], color="#555555", linestyle=":", label=f"p95 = {stats['p95']:.0f}")
    ax.set_xlabel("tokens per sample (chat template applied)")
    ax.set_ylabel("samples")
    ax.set_title(
        f"{stats['truncated_share']:.1%} of {stats['count']} samples truncated at "
        f"max_length={max_length}"
    )
    ax.legend()
    return ax
