"""The results file: one JSON per run and profile, one entry per model variant.

Notebook 04 starts it with the base and fine-tuned models; notebook 05 appends its quantized
variants, so every number about a profile's models sits in one file, measured the same way.

    >>> path = start_results("cpu-demo", decoding=DECODING)
    >>> record_variant(path, "fine-tuned", {"json_valid": 0.93, "perplexity": 1.4})
    >>> results_frame(path)  # variants x metrics
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

# Every metric notebook 04 records for the base and fine-tuned models.
CORE_METRICS = (
    "json_valid",
    "exact_match",
    "field_accuracy",
    "self_cognition_hit",
    "self_cognition_rouge_l",
    "probe_accuracy",
    "perplexity",
)


def results_path(profile_name: str) -> Path:
    """outputs/eval/results_<profile>.json."""
    from helpers.course import outputs_dir

    return outputs_dir() / "eval" / f"results_{profile_name}.json"


def _write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")


def start_results(profile_name: str, **meta: Any) -> Path:
    """A fresh results file for this run (replaces an older one); ``meta`` is stored as given."""
    path = results_path(profile_name)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write(path, {"profile": profile_name, "started": started, **meta, "variants": {}})
    return path


def load_results(path: str | Path) -> dict:
    """The results file as a dict; a clear error when 04 has not written it yet."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run notebook 04 first (it starts it).")
    return json.loads(path.read_text(encoding="utf-8"))


def record_variant(path: str | Path, variant: str, metrics: dict[str, float], **extra: Any) -> dict:
    """Add or replace one variant's metrics (and extra details) in the results file."""
    results = load_results(path)
    bad = {k: v for k, v in metrics.items() if not isinstance(v, int | float) or v != v}
    if bad:
        raise ValueError(f"metrics must be numbers (not NaN); got {bad} for {variant!r}")
    results["variants"][variant] = {"metrics": dict(metrics), **extra}
    _write(Path(path), results)
    return results


def results_frame(path: str | Path):
    """Variants as rows, metrics as columns."""
    import pandas as pd

    variants = load_results(path)["variants"]
    return pd.DataFrame({name: v["metrics"] for name, v in variants.items()}).T
