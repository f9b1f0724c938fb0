"""Load testing an OpenAI-compatible server: latency percentiles and errors under concurrency.

>>> from helpers.serve.loadtest import load_test
>>> load_test(server.url, key, "tuned", ["你好"], concurrency=4, requests=16)["p95_s"]
>>> load_test(server.url, key, "tuned", ["你好"], requests=64, feedback=0.5)["feedback"]  # 07
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
    feedback: float = 0.0,
) -> dict[str, Any]:
    """Send ``requests`` greedy chat requests from ``concurrency`` threads; latency and errors.

    A prompt is a user message, or a whole conversation (system prompt included) as a list.

    Returns requests, concurrency, errors, error_samples, p50_s, p95_s, mean_s (latencies of
    the successful requests; percentiles interpolate linearly between ranks), wall_s,
    tokens_per_s (completion tokens over wall time), latencies_s (each successful request) and
    ids (their response ids).

    ``feedback`` (0..1): that share of the answered requests gets feedback posted to
    ``POST /v1/feedback`` as soon as its answer arrives, from a second pool of threads, while
    the load goes on (a server's users rate answers while others ask): alternately "down" with
    a correction and "up". Adds feedback (the (id, rating, correction) posted and accepted)
    and feedback_errors.
    """
    import httpx
    import openai

    if not 0.0 <= feedback <= 1.0:
        raise ValueError(f"feedback is a share of the requests, 0..1; got {feedback}")
    total = len(prompts) if requests is None else requests
    client = openai.OpenAI(
        base_url=url, api_key=api_key or "none", max_retries=0, timeout=timeout_s
    )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    poster = httpx.Client(base_url=url, headers=headers, timeout=timeout_s, trust_env=False)
    rater = ThreadPoolExecutor(max_workers=concurrency)
    rated: list[Future] = []

    def rate(i: int, response_id: str) -> tuple[str, str, str | None]:
        rating, correction = ("down", f"corrected answer {i}") if i % 2 else ("up", None)
        body = {"request_id": response_id, "rating": rating, "correction": correction}
        answer = poster.post("/feedback", json=body)
        if answer.status_code != 200:
            raise RuntimeError(
                f"feedback for {response_id}: HTTP {answer.status_code} {answer.text}"
            )
        return response_id, rating, correction

    def one(i: int) -> tuple[float, int, str | None, str | None]:
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
            seconds = time.perf_counter() - start
            tokens = answer.usage.completion_tokens if answer.usage else 0
            if int((i + 1) * feedback) > int(i * feedback):  # spread evenly over the run
                rated.append(rater.submit(rate, i, answer.id))
            return seconds, tokens, None, answer.id
        except Exception as exc:  # count every failure, keep a few messages
            return time.perf_counter() - start, 0, f"{type(exc).__name__}: {exc}", None

    wall = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(total)))
    wall = time.perf_counter() - wall
    rater.shutdown(wait=True)
    client.close()
    poster.close()
    ok = [seconds for seconds, _, error, _ in results if error is None]
    errors = [error for _, _, error, _ in results if error is not None]
    feedback_errors = [str(f.exception()) for f in rated if f.exception() is not None]

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
        "tokens_per_s": round(sum(tokens for _, tokens, _, _ in results) / wall, 1),
        "latencies_s": ok,  # successful requests, in completion order
        "ids": [response_id for *_, response_id in results if response_id is not None],
        **(
            {
                "feedback": [f.result() for f in rated if f.exception() is None],
                "feedback_errors": len(feedback_errors),
                "feedback_error_samples": feedback_errors[:3],
            }
            if feedback
            else {}
        ),
    }
