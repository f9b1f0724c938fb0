"""Load testing an OpenAI-compatible server: latency percentiles and errors under concurrency.

>>> from helpers.serve.loadtest import load_test
>>> load_test(server.url, key, "tuned", ["你好"], concurrency=4, requests=16)["p95_s"]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def load_test(
    url: str,
    api_key: str | None,
    model: str,
    prompts: Sequence[str | list[dict]],
    concurrency: int = 8,
    max_tokens: int = 32,
    requests: int | None = None,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Send ``requests`` greedy chat requests from ``concurrency`` threads; latency and errors.

    A prompt is a user message, or a whole conversation (system prompt included) as a list.

    Returns requests, concurrency, errors, error_samples, p50_s, p95_s, mean_s (latencies of
    the successful requests; percentiles interpolate linearly between ranks), wall_s,
    tokens_per_s (completion tokens over wall time) and latencies_s (each successful request).
    """
    import openai

    total = len(prompts) if requests is None else requests
    client = openai.OpenAI(
        base_url=url, api_key=api_key or "none", max_retries=0, timeout=timeout_s
    )

    def one(i: int) -> tuple[float, int, str | None]:
        start = time.perf_counter()
        try:
            prompt = prompts[i % len(prompts)]
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            answer = client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=max_tokens,
                temperature=0,
            )
            tokens = answer.usage.completion_tokens if answer.usage else 0
            return time.perf_counter() - start, tokens, None
        except Exception as exc:  # count every failure, keep a few messages
            return time.perf_counter() - start, 0, f"{type(exc).__name__}: {exc}"

    wall = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(total)))
    wall = time.perf_counter() - wall
    client.close()
    ok = [seconds for seconds, _, error in results if error is None]
    errors = [error for _, _, error in results if error is not None]

    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "requests": total,
        "concurrency": concurrency,
        "errors": len(errors),
        "error_samples": errors[:3],
        "p50_s": rounded(_percentile(ok, 0.50)),
        "p95_s": rounded(_percentile(ok, 0.95)),
        "mean_s": rounded(sum(ok) / len(ok) if ok else None),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(sum(tokens for _, tokens, _ in results) / wall, 1),
        "latencies_s": ok,  # successful requests, in completion order
    }
