"""Measure notebook 01's data decisions by their effect after a short LoRA run.

    python bench/data_synthesis.py --profile cpu-demo          # both experiments, 46 min (measured)
    python bench/data_synthesis.py --profile tiny --max-steps 10 --test-rows 40   # smoke test

Two experiments, each a fresh LoRA run per variant (the profile's steps and train_samples,
as 03 trains), scored on the test split by the intent the model finds most likely
(``helpers.data.effect.intent_predictions``: teacher forcing, no generation):

* ``synthesis``: 01's balanced rows vs the same plus synthetic rows
  (``helpers.data.synthesis.synthesize``), intent accuracy on 04's ``seen template`` and
  ``unseen template`` slices. Synthesis only rewrites seen templates; whether that helps on
  templates the model never saw is the question.
* ``balance``: 01's cleaned rows before balancing under none / down / up / weight, per-intent
  recall on the whole test split; then ``helpers.data.effect.LIVE_POINT``, the small run
  notebook 01 repeats live and compares with this file.

Results go to bench/results/data_synthesis-<profile>.json with the command, profile, machine
and date; notebook 01 shows the active profile's file when it exists. On tiny (random weights) the
numbers only prove the code runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from helpers import data
from helpers.data.effect import balance_variants, intent_of, run_live_point, run_variant
from helpers.data.synthesis import synthesize
from helpers.profiles import get_profile

RESULTS = Path(__file__).parent / "results"
SLICES = {"seen template": True, "unseen template": False}


def cleaned_rows(seed: int) -> tuple[list[dict], list[dict]]:
    """01's cleaned rows before balancing, and after its down-sampling to the median."""
    result = data.run_pipeline(data.raw_files(), test_rows=data.load_split("test"), progress=False)
    balanced = data.rebalance(result.rows, mode="down", target="median", seed=seed)
    return result.rows, balanced


def slice_accuracy(run: dict, test: list[dict]) -> dict[str, float]:
    """Intent accuracy per template slice from a run's predictions."""
    out = {}
    for name, seen in SLICES.items():
        idx = [i for i, r in enumerate(test) if r["meta"]["seen_template"] is seen]
        hits = [run["predicted"][i] == intent_of(test[i]) for i in idx]
        out[name] = round(sum(hits) / len(hits), 3) if hits else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default=os.environ.get("COURSE_PROFILE", "cpu-demo"))
    parser.add_argument("--only", choices=["synthesis", "balance"], default=None)
    parser.add_argument("--synthetic", type=int, default=1000, help="candidates to synthesize")
    parser.add_argument("--max-steps", type=int, default=None, help="default: the profile's")
    parser.add_argument("--test-rows", type=int, default=None, help="default: all 200")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    profile = get_profile(args.profile)
    overrides = {"max_steps": args.max_steps} if args.max_steps else {}
    test = data.load_split("test")[: args.test_rows]
    raw, balanced = cleaned_rows(args.seed)
    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "profile": profile.name,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "test_rows": len(test),
        "max_steps": args.max_steps or profile.max_steps,
        "train_samples": profile.train_samples,
    }
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:

        def run(name: str, rows: list[dict]) -> dict:
            t0 = time.time()
            out = run_variant(profile, rows, test, Path(tmp) / name, seed=args.seed, **overrides)
            print(f"{name}: accuracy {out['accuracy']} ({time.time() - t0:.0f} s)", flush=True)
            return out

        if args.only in (None, "synthesis"):
            every_test = data.load_split("test")  # decontaminate against all of it
            synth = synthesize(balanced, args.synthetic, seed=args.seed, test_rows=every_test)
            runs = {
                "real": run("real", balanced),
                "real+synthetic": run("synth", balanced + synth.rows),
            }
            results["synthesis"] = {
                "candidates": args.synthetic,
                "kept": len(synth.rows),
                "dropped": synth.report.counts(),
                "slices": {k: slice_accuracy(v, test) for k, v in runs.items()},
                "runs": {k: {x: v[x] for x in v if x != "predicted"} for k, v in runs.items()},
            }
        if args.only in (None, "balance"):
            variants = balance_variants(raw, seed=args.seed)
            runs = {mode: run(mode, rows) for mode, rows in variants.items()}
            results["balance"] = {
                "rows": {mode: len(rows) for mode, rows in variants.items()},
                "runs": {k: {x: v[x] for x in v if x != "predicted"} for k, v in runs.items()},
            }
            live = run_live_point(profile, variants, data.load_split("test"), Path(tmp) / "live")
            results["live_point"] = live  # with its predictions: notebook 01 re-runs it
            print(f"live point: accuracy {live['accuracy']}", flush=True)
    results["seconds"] = round(time.time() - started)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"data_synthesis-{profile.name}.json"
    path.write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
