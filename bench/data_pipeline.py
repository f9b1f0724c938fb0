"""Time validation and dedup on 10k / 30k / 100k synthetic chat rows; print how time grows.

    python bench/data_pipeline.py                  # 10k, 30k, 100k
    python bench/data_pipeline.py --sizes 5000 20000

Rows are random Chinese-like sentences (2-character "words" from a 3,000-word vocabulary),
with 5% exact duplicates (whitespace/punctuation variants) and 5% one-character edits mixed
in. Time is measured without tracing; peak Python memory in a second, traced pass
(tracemalloc slows code down, so its run is not timed).
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from typing import Any

from helpers.data import deduplicate, from_records  # the course package, installed -e


def synthetic_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n OpenAI-chat records; about 5% exact and 5% near duplicates of earlier rows."""
    rng = random.Random(seed)
    vocab = [
        chr(0x4E00 + rng.randrange(6000)) + chr(0x4E00 + rng.randrange(6000)) for _ in range(3000)
    ]
    users: list[str] = []
    for _i in range(n):
        r = rng.random()
        if users and r < 0.05:
            users.append(" " + rng.choice(users) + "！")
        elif users and r < 0.10:
            src = rng.choice(users)
            k = rng.randrange(len(src))
            users.append(src[:k] + "的" + src[k + 1 :])
        else:
            words = rng.choices(vocab, k=rng.randint(12, 30))
            users.append("".join(words) + f"，订单DD{rng.randrange(10**9, 10**10)}")
    return [
        {
            "messages": [
                {"role": "user", "content": u},
                {"role": "assistant", "content": '{"intent":"track_order"}'},
            ]
        }
        for u in users
    ]


def run_once(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Validate (normalise + structural checks) then exact+near dedup; returns timings."""
    t0 = time.perf_counter()
    rows, report = from_records(records, progress=False)
    t1 = time.perf_counter()
    kept, pairs = deduplicate(rows, report=report, progress=False)
    t2 = time.perf_counter()
    report.verify()
    return {"validate_s": t1 - t0, "dedup_s": t2 - t1, "kept": len(kept), "dups": len(pairs)}


def peak_mib(records: list[dict[str, Any]]) -> float:
    """Peak traced Python memory (MiB) of one validate+dedup pass."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    run_once(records)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    """Print one table row per size, then the growth factor between sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--no-memory", action="store_true", help="skip the traced pass")
    args = parser.parse_args()
    header = (
        f"{'rows':>8} {'validate s':>11} {'rows/s':>9} {'dedup s':>9} {'rows/s':>9} "
        f"{'kept':>8} {'dups':>7} {'peak MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    results = []
    for n in args.sizes:
        records = synthetic_records(n)
        res = run_once(records)
        res["peak"] = float("nan") if args.no_memory else peak_mib(records)
        results.append((n, res))
        print(
            f"{n:>8} {res['validate_s']:>11.2f} {n / res['validate_s']:>9.0f} "
            f"{res['dedup_s']:>9.2f} {n / res['dedup_s']:>9.0f} {res['kept']:>8} "
            f"{res['dups']:>7} {res['peak']:>9.1f}"
        )
    for (n0, r0), (n1, r1) in zip(results, results[1:], strict=False):
        t0 = r0["validate_s"] + r0["dedup_s"]
        t1 = r1["validate_s"] + r1["dedup_s"]
        print(f"{n0} -> {n1} rows (x{n1 / n0:.1f}): total time x{t1 / t0:.2f}")


if __name__ == "__main__":
    main()
