"""The raw-to-clean pipeline in one call: load, validate, clean, dedup, decontaminate.

>>> from helpers.data.pipeline import run_pipeline
>>> result = run_pipeline(raw_files(), test_rows=load_split("test"))
>>> print(result.report.summary())  # input, dropped per reason, kept
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cleaning import clean_rows
from .dedup import DEFAULT_THRESHOLD, DuplicatePair, Overlap, decontaminate, deduplicate
from .io import load_conversations
from .validation import DropReport


@dataclass
class PipelineResult:
    """Kept rows, the drop ledger, PII counts, duplicate pairs and test overlaps."""

    rows: list[dict[str, Any]]
    report: DropReport
    pii: Counter = field(default_factory=Counter)
    duplicates: list[DuplicatePair] = field(default_factory=list)
    overlaps: list[Overlap] = field(default_factory=list)


def run_pipeline(
    paths: str | Path | Iterable[str | Path],
    *,
    test_rows: Sequence[Mapping[str, Any]] | None = None,
    system_prompt: str | None = None,
    min_answer_chars: int = 2,
    max_chars: int | None = 2000,
    threshold: float = DEFAULT_THRESHOLD,
    strict: bool = False,
    progress: bool = True,
) -> PipelineResult:
    """Run every stage on the files; ``report`` reconciles input == kept + dropped."""
    rows, report = load_conversations(paths, strict=strict, progress=progress)
    rows, report, pii = clean_rows(
        rows,
        report=report,
        system_prompt=system_prompt,
        min_answer_chars=min_answer_chars,
        max_chars=max_chars,
        progress=progress,
    )
    rows, pairs = deduplicate(rows, threshold=threshold, report=report, progress=progress)
    overlaps: list[Overlap] = []
    if test_rows is not None:
        rows, overlaps = decontaminate(
            rows, test_rows, report=report, threshold=threshold, progress=progress
        )
    report.verify()
    return PipelineResult(rows, report, pii, pairs, overlaps)
