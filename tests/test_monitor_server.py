"""The server's monitoring: one log row per request, metrics, feedback, versions (fake backends).

Every server listens on 127.0.0.1 with port=0; nothing leaves the machine.
"""

import json
import sqlite3
import threading
import time

import httpx
import openai
import pytest

from helpers.monitor.log import MAX_CORRECTION_CHARS, RequestLog
from helpers.monitor.metrics import ServerMetrics
from helpers.monitor.registry import AdapterRegistry
from helpers.serve import ChatResult, Limits, load_test, start_server

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "hello 13812345678"}]


class Echo:
    """Answers 'echo: <last message>' one word per delta, with a confidence."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False):
        self.delay_s, self.fail = delay_s, fail

    def chat(self, messages, *, max_tokens, **params):
        if self.fail:
            raise RuntimeError("secret internal detail")
        words = f"echo: {messages[-1]['content']}".split(" ")
        for i, word in enumerate(words[:max_tokens]):
            time.sleep(self.delay_s)
            yield word if i == 0 else " " + word
        yield ChatResult("stop", 5, min(len(words), max_tokens), mean_logprob=-0.25)


class Named:
    """A version's backend: answers with the version's name (and counts its loads)."""

    loads: list[str] = []

    def __init__(self, version: str):
        self.version = version
        Named.loads.append(version)

    def chat(self, messages, **params):
        yield self.version
        yield ChatResult("stop", 1, 1)


def feedback(handle, request_id, rating="down", correction=None, headers=AUTH):
    body = {"request_id": request_id, "rating": rating, "correction": correction}
    return httpx.post(f"{handle.url}/feedback", json=body, headers=headers, timeout=10)


def feedback_rows(log: RequestLog) -> int:
    with sqlite3.connect(log.path) as db:
        return db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]


@pytest.fixture
def monitored(tmp_path):
    log, metrics = RequestLog(tmp_path / "requests.db"), ServerMetrics()
    models = {"echo": Echo(), "slow": Echo(delay_s=0.05), "broken": Echo(fail=True)}
    limits = Limits(max_tokens=64, timeout_s=0.5, max_body_bytes=8000)
    with start_server(models, port=0, api_key=KEY, limits=limits, log=log, metrics=metrics) as h:
        yield h, log, metrics


def test_every_request_ends_with_exactly_one_row(monitored):
    handle, log, metrics = monitored
    url = f"{handle.url}/chat/completions"
    client = openai.OpenAI(base_url=handle.url, api_key=KEY, max_retries=0)
    tags = {"replay_ts": "86400.25", "day": "2"}
    answer = client.chat.completions.create(model="echo", messages=HI, user="shop-7", metadata=tags)
    chunks = list(client.chat.completions.create(model="echo", messages=HI, stream=True))
    sent = {
        answer.id: 200,
        chunks[0].id: 200,
        httpx.post(url, json={"model": "echo", "messages": HI}).headers["x-request-id"]: 401,
        httpx.post(url, content=b"{", headers=AUTH).headers["x-request-id"]: 400,
        httpx.post(url, json={"model": "gpt-4", "messages": HI}, headers=AUTH).headers[
            "x-request-id"
        ]: 404,
        httpx.post(url, json={"model": "broken", "messages": HI}, headers=AUTH).headers[
            "x-request-id"
        ]: 500,
    }
    long = [{"role": "user", "content": " ".join(["word"] * 40)}]  # 2 s of words, 0.5 s allowed
    timed_out = httpx.post(url, json={"model": "slow", "messages": long}, headers=AUTH, timeout=10)
    sent[timed_out.headers["x-request-id"]] = 504
    too_many = {"model": "echo", "messages": HI, "metadata": {f"k{i}": "v" for i in range(17)}}
    sent[httpx.post(url, json=too_many, headers=AUTH).headers["x-request-id"]] = 400
    with httpx.stream(
        "POST", url, json={"model": "slow", "messages": long, "stream": True}, headers=AUTH
    ) as stream:
        left = stream.headers["x-request-id"]
        next(stream.iter_lines())  # the client goes away after the first event
    sent[left] = 499
    deadline = time.monotonic() + 5
    while len(log) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # nothing more arrives
    df = log.frame().set_index("id")
    assert len(df) == len(sent) and dict(df["status"]) == sent
    ok = df.loc[answer.id]
    assert ok["client"] == "shop-7" and ok["metadata"] == tags and ok["replay_ts"] == 86400.25
    assert ok["output"] == "echo: hello [PHONE]" and ok["prompt"] == "hello [PHONE]"
    assert ok["messages"] == [{"role": "user", "content": "hello [PHONE]"}]
    assert ok["prompt_tokens"] == 5 and ok["completion_tokens"] == 3 and ok["confidence"] == -0.25
    assert 0 < ok["ttft_s"] <= ok["latency_s"] and ok["pii_in_output"] and not ok["json_valid"]
    streamed = df.loc[chunks[0].id]
    assert streamed["output"] == "echo: hello [PHONE]" and 0 < streamed["ttft_s"]
    assert streamed["completion_tokens"] == 3 and streamed["client"] is None
    assert "secret" not in df.loc[timed_out.headers["x-request-id"], "error"]
    assert df.loc[left, "output"].startswith("echo:") and df.loc[left, "error"]  # text so far
    assert df[df["status"] != 200]["json_valid"].isna().all()
    text = httpx.get(handle.url.removesuffix("/v1") + "/metrics", headers=AUTH).text
    assert 'llm_requests_total{code="200",model="echo",version=""} 2.0' in text
    assert 'llm_requests_total{code="404",model="",version=""} 1.0' in text  # no label per name
    assert 'llm_requests_total{code="499",model="slow",version=""} 1.0' in text
    assert metrics.value("llm_pii_in_output_total", model="echo") == 2
    assert metrics.value("llm_time_to_first_token_seconds_count", model="echo", version="") == 2
    assert 'llm_queue_depth{model="slow"}' in text


def test_feedback_right_after_the_answer_and_refusals_write_nothing(monitored):
    handle, log, metrics = monitored
    client = openai.OpenAI(base_url=handle.url, api_key=KEY, max_retries=0)
    for _ in range(5):  # posted the moment the answer is in: the row must be there
        answer = client.chat.completions.create(model="echo", messages=HI)
        assert feedback(handle, answer.id, "up").json()["rating"] == 1
        stream = client.chat.completions.create(model="echo", messages=HI, stream=True)
        streamed = [c.id for c in stream][0]
        assert feedback(handle, streamed, -1, "fixed 13812345678").status_code == 200
    before = feedback_rows(log)
    refused = {
        404: feedback(handle, "chatcmpl-unknown", "up"),
        400: feedback(handle, answer.id, "meh"),
        413: feedback(handle, answer.id, "down", "x" * (MAX_CORRECTION_CHARS + 1)),
        401: feedback(handle, answer.id, "up", headers={}),
    }
    for status, response in refused.items():
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"message", "type", "code"}
    assert "x-request-id" in refused[404].json()["error"]["message"]
    bad_json = httpx.post(f"{handle.url}/feedback", content=b"{", headers=AUTH)
    assert bad_json.status_code == 400 and "request_id" in bad_json.json()["error"]["message"]
    assert feedback_rows(log) == before == 10
    df = log.frame().set_index("id")
    assert df.loc[streamed, "feedback_correction"] == "fixed [PHONE]"
    assert metrics.value("llm_feedback_total", rating="up") == 5
    assert metrics.value("llm_feedback_total", rating="down") == 5
    assert httpx.get(handle.url.removesuffix("/v1") + "/metrics").status_code == 401


def test_concurrent_load_with_feedback_in_parallel_loses_no_row(tmp_path):
    log = RequestLog(tmp_path / "requests.db")
    limits = Limits(max_concurrent=4, max_queue=64)
    models = {"echo": Echo(delay_s=0.002)}
    with start_server(models, port=0, api_key=KEY, limits=limits, log=log) as handle:
        report = load_test(
            handle.url, KEY, "echo", ["a b", "c d e"], concurrency=8, requests=60, feedback=0.5
        )
        # malformed feedback in the middle of it all: refused, nothing written
        assert feedback(handle, "chatcmpl-nope").status_code == 404
        assert feedback(handle, report["ids"][0], "sideways").status_code == 400
        long = "x" * (MAX_CORRECTION_CHARS + 1)
        assert feedback(handle, report["ids"][0], "down", long).status_code == 413
    print("\nload test with feedback:", {k: v for k, v in report.items() if k != "latencies_s"})
    assert report["errors"] == 0 and report["feedback_errors"] == 0, report
    df = log.frame()
    assert len(df) == 60 and sorted(df["id"]) == sorted(report["ids"])
    assert (df["status"] == 200).all()
    sent = {rid: (rating, correction) for rid, rating, correction in report["feedback"]}
    assert len(sent) == 30 and feedback_rows(log) == 30
    rated = df.dropna(subset=["feedback_rating"]).set_index("id")
    assert {
        rid: ({1: "up", -1: "down"}[row.feedback_rating], row.feedback_correction)
        for rid, row in rated.iterrows()
    } == sent


def test_canary_promote_and_rollback_through_the_server(tmp_path):
    Named.loads.clear()
    registry = AdapterRegistry(tmp_path / "registry.json")
    for version in ("r1", "r2"):
        registry.register(version, tmp_path / version)
    registry.serve("tuned", "r1")
    log = RequestLog(tmp_path / "requests.db")
    with start_server(
        {"base": Echo()},
        port=0,
        api_key=KEY,
        log=log,
        registry=AdapterRegistry(registry.path),  # the server's own copy of the file
        load_version=lambda version, adapter_dir: Named(version),
    ) as handle:
        client = openai.OpenAI(base_url=handle.url, api_key=KEY, max_retries=0)

        def answers(n: int = 40) -> list[str]:
            return [
                client.chat.completions.create(model="tuned", messages=HI, user=f"u{i}")
                .choices[0]
                .message.content
                for i in range(n)
            ]

        assert set(answers(5)) == {"r1"}
        listing = {m.id: m for m in client.models.list().data}
        assert set(listing) == {"base", "tuned", "r1", "r2"}
        assert listing["tuned"].model_extra["stable"] == "r1"
        registry.start_canary("tuned", "r2", share=0.3)
        canary = answers()
        assert 0 < canary.count("r2") < 40 and canary == answers()  # a client keeps its version
        assert registry.promote("tuned") == "r2"
        assert set(answers()) == {"r2"}  # the canary version answers
        assert registry.rollback("tuned") == "r1"
        assert set(answers()) == {"r1"}  # and after the rollback the old one again
        direct = client.chat.completions.create(model="r2", messages=HI)
        assert direct.choices[0].message.content == "r2"  # a version by its own name
        with pytest.raises(openai.NotFoundError, match="tuned"):
            client.chat.completions.create(model="r3", messages=HI)
    assert Named.loads == ["r1", "r2"]  # each version loaded once, when first needed
    df = log.frame()
    served = df[df["model"] == "tuned"]
    assert (served["version"] == served["output"]).all()  # the log names who answered
    assert df[df["model"] == "base"].empty and df.iloc[-2]["version"] == "r2"


def test_without_log_or_metrics_nothing_is_recorded(tmp_path):
    with start_server({"echo": Echo()}, port=0) as handle:
        assert [r for r in handle._owned if not isinstance(r, Echo)] == []  # no recorder thread
        answer = httpx.post(
            f"{handle.url}/chat/completions", json={"model": "echo", "messages": HI}
        )
        assert answer.headers["x-request-id"] == answer.json()["id"]
        refused = feedback(handle, answer.json()["id"], headers={})
        assert refused.status_code == 501 and "log=RequestLog" in refused.text
        metrics = httpx.get(handle.url.removesuffix("/v1") + "/metrics")
        assert metrics.status_code == 501 and "ServerMetrics" in metrics.text
        unknown = httpx.get(handle.url.removesuffix("/v1") + "/nope").json()["error"]["message"]
        assert "POST /v1/feedback" in unknown and "GET /metrics" in unknown
    assert not any(t.name == "monitor-log" for t in threading.enumerate())


def test_stop_writes_the_rows_still_queued(tmp_path):
    log = RequestLog(tmp_path / "requests.db")
    with start_server({"echo": Echo()}, port=0, log=log) as handle:
        url = f"{handle.url}/chat/completions"
        for _ in range(20):
            httpx.post(url, json={"model": "echo", "messages": HI})
    assert len(log) == 20 and json.loads(
        log.export(tmp_path / "x.jsonl").read_text().split("\n")[0]
    )


def test_flush_makes_every_answered_request_readable(tmp_path):
    log = RequestLog(tmp_path / "requests.db")
    with start_server({"echo": Echo()}, port=0, log=log) as handle:
        url = f"{handle.url}/chat/completions"
        ids = [
            httpx.post(url, json={"model": "echo", "messages": HI}).json()["id"] for _ in range(5)
        ]
        assert handle.flush()
        assert set(log.frame()["id"]) == set(ids)  # read while the server still runs
    with start_server({"echo": Echo()}, port=0) as plain:
        assert plain.flush()  # nothing to wait for without a log
