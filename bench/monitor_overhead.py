"""Latency of the same chat requests with and without the request log and metrics (notebook 07).

    python bench/monitor_overhead.py                       # the tiny GGUF in outputs/gguf/tiny
    python bench/monitor_overhead.py --gguf path/to/model.gguf --requests 200 --max-tokens 32

Two servers share one llama.cpp backend: one plain, one with ``log=RequestLog(...)`` and
``metrics=ServerMetrics()``. Requests alternate between them (plain first on even rounds,
monitored first on odd ones), one at a time, so both see the same machine load; the figures
are client-side latencies (request sent -> whole answer received). Target: p50 within 5%.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from helpers.monitor.log import RequestLog
from helpers.monitor.metrics import ServerMetrics
from helpers.serve import LlamaCppBackend, start_server
from helpers.serve.loadtest import _percentile

PROMPTS = ["你好", "我的订单什么时候到？", "I want a refund for order A1234", "谢谢，再见"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", type=Path, default=None, help="default: outputs/gguf/tiny/*")
    parser.add_argument("--requests", type=int, default=200, help="per server")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    tiny = Path("outputs/gguf/tiny")  # the tuned model first, as 06 serves it
    gguf = args.gguf or next(
        iter(sorted(tiny.glob("model-*.gguf")) + sorted(tiny.glob("*.gguf"))), None
    )
    if gguf is None:
        raise SystemExit("No GGUF: run notebook 05 under COURSE_PROFILE=tiny, or pass --gguf.")
    backend = LlamaCppBackend(gguf, n_ctx=512)
    with tempfile.TemporaryDirectory() as tmp:
        log = RequestLog(Path(tmp) / "requests.db")
        plain = start_server({"m": backend}, port=0)
        monitored = start_server({"m": backend}, port=0, log=log, metrics=ServerMetrics())
        clients = {"plain": httpx.Client(), "monitored": httpx.Client()}
        urls = {"plain": plain.url, "monitored": monitored.url}
        seconds: dict[str, list[float]] = {"plain": [], "monitored": []}

        def ask(name: str, prompt: str) -> float:
            body = {
                "model": "m",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": args.max_tokens,
                "temperature": 0,
            }
            start = time.perf_counter()
            answer = clients[name].post(f"{urls[name]}/chat/completions", json=body, timeout=60)
            elapsed = time.perf_counter() - start
            answer.raise_for_status()
            return elapsed

        for i in range(10):  # warm-up: caches, first imports, connections
            for name in seconds:
                ask(name, PROMPTS[i % len(PROMPTS)])
        for i in range(args.requests):
            order = ("plain", "monitored") if i % 2 == 0 else ("monitored", "plain")
            for name in order:
                seconds[name].append(ask(name, PROMPTS[i % len(PROMPTS)]))
        plain.stop()
        monitored.stop()
        rows = len(log)
    print(f"{gguf.name}, {args.requests} requests per server, max_tokens={args.max_tokens}")
    p50 = {}
    for name, values in seconds.items():
        p50[name] = statistics.median(values)
        p95 = _percentile(values, 0.95)
        print(f"  {name:>9}: p50 {p50[name] * 1000:7.2f} ms   p95 {p95 * 1000:7.2f} ms")
    overhead = p50["monitored"] / p50["plain"] - 1
    print(f"  p50 overhead of log + metrics: {overhead:+.1%} (target: within 5%)")
    print(f"  log rows: {rows} (expected {args.requests + 10})")


if __name__ == "__main__":
    main()
