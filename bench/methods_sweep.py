"""Notebook 09's full sweep: every method and remedy at the same budget, one results file.

Each configuration loads a fresh base model, trains on the same rows for the same steps and
batch (``helpers.methods.budget_for``), and is measured the same way (task metrics on a
held-out slice, general probe, loss on held-out general text). The file holds the command,
profile, machine, date, budget, the base model's measurement and one record per configuration;
it is rewritten after every configuration, so a stopped run keeps what it measured. Notebook
09 plots it and re-runs one configuration live to check it agrees.

Run notebook 01 first, with the same COURSE_OUTPUTS: like 03 and 09, the sweep trains on 01's
cleaned split when it exists (else on data/main/). The file says which (``training_data``),
and every record carries ``training_data_sha256`` (:func:`helpers.methods.data_fingerprint`),
so 09's live re-run can tell different data from a disagreement.

    python bench/methods_sweep.py --profile tiny        # 0.5 min on 2 cores (measured)
    python bench/methods_sweep.py --profile cpu-demo    # 51.5 min on 2 cores (measured)
    python bench/methods_sweep.py --profile tiny --only lora-qv kl-1   # -> ..._partial.json

cpu-demo estimate (before any run): 03 measured ~7.4 s per step of 8 rows, so ~3.7 s per step
of 4 and ~90 s for 24 steps; + ~25 s to load and evaluate. 16 LoRA-like configurations (IA3,
replay, EWC, lower lr, schedulers among them) ~115 s each: 31 min; the KL remedy's no-grad
second forward (+30%): 2 x 2.4 min; full, frozen-lower and progressive (every weight's
gradient and AdamW state) ~2x: 3 x 3.4 min; prefix and prompt tuning take TRL's path, whose
head projects every position (~10 s a step): 2 x 4.4 min. About 55 min in all; 90 min
would mean steps 1.6x slower than this estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from helpers import methods
from helpers.course import outputs_dir
from helpers.models import load_model
from helpers.profiles import active_profile, get_profile
from helpers.sft import training_rows

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """Where the numbers come from: CPU, cores and threads, GPU, library versions."""
    from importlib.metadata import version

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        **{pkg: version(pkg) for pkg in ("torch", "transformers", "peft", "trl")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", help="a profile name (default: the active profile)")
    parser.add_argument("--only", nargs="*", help="configuration names (default: all)")
    parser.add_argument("--out", type=Path, help="results file (default: bench/results/)")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile) if args.profile else active_profile()
    budget = methods.budget_for(profile)
    chosen = [c for c in methods.sweep_configurations() if not args.only or c.name in args.only]
    if args.only and len(chosen) != len(args.only):
        known = [c.name for c in methods.sweep_configurations()]
        parser.error(f"unknown configuration in {args.only}; choose from {known}")
    partial = "_partial" if args.only else ""  # a subset never overwrites the full sweep
    out = args.out or RESULTS_DIR / f"methods_sweep_{profile.name}{partial}.json"
    model, tokenizer = load_model(profile)
    start = time.perf_counter()
    result = {
        "command": " ".join(["python", "bench/methods_sweep.py", *(argv or sys.argv[1:])]),
        "profile": profile.name,
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget": budget.__dict__,
        "training_data": training_rows(profile)[1].replace(str(outputs_dir()), "<outputs>"),
        "base": methods.evaluate(model, tokenizer, profile, budget),
        "records": [],
    }
    del model
    with tempfile.TemporaryDirectory() as workdir:
        for i, method in enumerate(chosen, 1):
            t0 = time.perf_counter()
            record = methods.run_method(method, profile, result["base"], workdir, budget)
            record["wall_seconds"] = time.perf_counter() - t0
            result["records"].append(record)
            result["total_minutes"] = (time.perf_counter() - start) / 60
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
            print(
                f"[{i}/{len(chosen)}] {method.name}: {record['wall_seconds']:.0f} s, "
                f"field_accuracy {record['field_accuracy']:.3f}, "
                f"probe_drop {record['probe_drop']:+.3f}, "
                f"general_loss_change {record['general_loss_change']:+.3f}",
                flush=True,
            )
    print(f"{len(chosen)} configurations in {result['total_minutes']:.1f} min -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
