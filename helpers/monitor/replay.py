"""Replaying recorded traffic against the server, with simulated users who give feedback.

Notebook 07 has no real users, so it replays ``data/traffic/day*.jsonl`` through the ``openai``
client, exactly as an application would call the server, and lets some of the "users" rate
the answer through ``POST /v1/feedback``:

    >>> users = SimulatedUsers(share=0.4, correct_share=0.5)
    >>> sent = replay(server.url, key, day1, profile, max_tokens=64, users=users)

Each row's ``replay_ts`` travels in OpenAI's ``metadata`` field, so the request log can place a
two-day replay on the traffic's own clock; ``traffic_id`` links a log row to its hidden truth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def _unit(key: str) -> float:
    """A stable number in [0, 1) per key: the same users rate the same requests on a rerun."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8


@dataclass(frozen=True)
class SimulatedUsers:
    """Who rates what: ``share`` of the answers get 👍/👎, judged against the hidden truth.

    A user sees whether the answer is right (all fields as the reference); a 👎 comes with a
    correction (the reference answer) for ``correct_share`` of them, as some real users type
    what they wanted. Requests without a reference (e.g. a bare injection) are not rated.
    """

    share: float = 0.4
    correct_share: float = 0.5

    def rate(self, traffic_id: str, answer: str, truth: str | None) -> dict | None:
        from helpers.data.course import parse_answer, same_value

        if truth is None or _unit("rate:" + traffic_id) >= self.share:
            return None
        got = parse_answer(answer or "")
        right = got is not None and same_value(got, parse_answer(truth))
        if right:
            return {"rating": "up"}
        if _unit("correct:" + traffic_id) < self.correct_share:
            return {"rating": "down", "correction": truth}
        return {"rating": "down"}


def replay(
    url: str,
    api_key: str | None,
    rows: Sequence[dict],
    profile,
    *,
    max_tokens: int,
    model: str = "tuned",
    users: SimulatedUsers | None = None,
    progress: bool = True,
    desc: str = "replay",
):
    """Send each traffic row as a greedy chat request; a DataFrame of what came back.

    Columns: traffic_id, request_id, status, answer, feedback (the rating sent, or None).
    Errors are rows too (status and answer = the error message), never an exception: a
    monitoring replay must see the failures it is there to count.
    """
    import httpx
    import openai
    import pandas as pd
    from tqdm.auto import tqdm

    client = openai.OpenAI(base_url=url, api_key=api_key or "none", max_retries=0, timeout=300)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, headers=headers, timeout=30, trust_env=False) as http:
        for row in tqdm(rows, desc=desc, disable=not progress):
            record = {"traffic_id": row["id"], "request_id": None, "feedback": None}
            try:
                answer = client.chat.completions.create(
                    model=model,
                    messages=profile.style_messages(row["messages"]),
                    max_tokens=max_tokens,
                    temperature=0,
                    user=row.get("client"),
                    metadata={"traffic_id": row["id"], "replay_ts": str(row["replay_ts"])},
                )
                text = answer.choices[0].message.content or ""
                record.update(request_id=answer.id, status=200, answer=text)
            except openai.APIStatusError as exc:
                record.update(status=exc.status_code, answer=str(exc.message))
                out.append(record)
                continue
            verdict = users.rate(row["id"], text, row.get("truth")) if users else None
            if verdict is not None:
                sent = http.post("/feedback", json={"request_id": answer.id, **verdict})
                sent.raise_for_status()  # a well-formed rating of a logged request: 200
                record["feedback"] = verdict["rating"]
            out.append(record)
    return pd.DataFrame(out, columns=["traffic_id", "request_id", "status", "answer", "feedback"])
