"""The OpenAI-compatible server: HTTP behaviour with fake backends, then a tiny real GGUF.

Every server listens on 127.0.0.1 with port=0 (a free port); nothing leaves the machine.
"""

import json
import os
import secrets
import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx
import jinja2
import openai
import pytest

from helpers.env import GpuInfo
from helpers.serve import (
    ChatResult,
    Limits,
    LlamaCppBackend,
    create_app,
    default_port,
    load_test,
    sandboxed_formatter,
    start_server,
    vllm_command,
)
from helpers.serve.vllm import VllmCommand

KEY = secrets.token_urlsafe(24)
HI = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_export) -> Path:
    """The transformers tokenizer of the model inside ``tiny_gguf`` (conftest)."""
    return tiny_export["merged"]


class EchoBackend:
    """Deterministic fake: answers 'echo: <last message>' one word per delta."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def chat(self, messages, *, max_tokens, temperature, top_p, stop, deadline):
        words = f"echo: {messages[-1]['content']}".split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        for piece in pieces[:max_tokens]:
            time.sleep(self.delay_s)
            yield piece
        finish = "length" if len(pieces) > max_tokens else "stop"
        yield ChatResult(finish, prompt_tokens=7, completion_tokens=min(len(pieces), max_tokens))


class BrokenBackend:
    """Fails inside generation with a message the client must never see."""

    def chat(self, messages, **params):
        raise RuntimeError("secret internal detail")
        yield  # a generator, like real backends


class GatedBackend(EchoBackend):
    """Holds every generation until the test opens the gate."""

    def __init__(self):
        super().__init__()
        self.started = threading.Event()
        self.gate = threading.Event()

    def chat(self, messages, **params):
        self.started.set()
        self.gate.wait(timeout=10)
        yield from super().chat(messages, **params)


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def post(server, body, key: str = KEY, **kwargs) -> httpx.Response:
    url = f"{server.url}/chat/completions"
    if isinstance(body, dict):
        return httpx.post(url, json=body, headers=auth(key), timeout=10, **kwargs)
    return httpx.post(url, content=body, headers=auth(key), timeout=10, **kwargs)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> str:
    """The status and OpenAI's error shape; returns the message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error["message"]


@pytest.fixture(scope="module")
def server():
    models = {"echo": EchoBackend(), "broken": BrokenBackend()}
    limits = Limits(max_tokens=64, max_body_bytes=2000)
    with start_server(models, port=0, api_key=KEY, limits=limits) as handle:
        yield handle


# --- pure HTTP behaviour, fake backends --------------------------------------------------------


def test_health_and_models(server):
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
    assert httpx.get(server.url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
    listing = httpx.get(f"{server.url}/models", headers=auth()).json()
    assert [m["id"] for m in listing["data"]] == ["echo", "broken"]
    assert server.models == ["echo", "broken"] and KEY not in repr(server)


def test_a_kept_alive_connection_answers_without_the_delayed_ack_wait(server):
    # Without TCP_NODELAY on the server's connections every response waited ~40 ms for the
    # client's delayed ACK (headers and body go out as two writes). Linux acknowledges the
    # first segments of a connection at once, so only the later requests show it: the median.
    with httpx.Client() as client:
        seconds = []
        for _ in range(10):
            start = time.perf_counter()
            client.get(server.url.removesuffix("/v1") + "/health").raise_for_status()
            seconds.append(time.perf_counter() - start)
    assert sorted(seconds)[5] < 0.02, seconds


def test_api_key_is_enforced(server):
    body = {"model": "echo", "messages": HI}
    response = httpx.post(f"{server.url}/chat/completions", json=body)
    assert_error(response, 401, "invalid_api_key")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert_error(post(server, body, key="wrong"), 401, "invalid_api_key")
    assert_error(httpx.get(f"{server.url}/models"), 401)
    wrong_scheme = {"Authorization": f"Basic {KEY}"}
    assert_error(httpx.get(f"{server.url}/models", headers=wrong_scheme), 401)
    answer = post(server, body)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "echo: hello there"


def test_completion_shape_and_usage(server):
    data = post(server, {"model": "echo", "messages": HI, "max_tokens": 2}).json()
    assert data["object"] == "chat.completion" and data["model"] == "echo"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello"}
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_malformed_json_is_400(server):
    assert "not valid JSON" in assert_error(post(server, b'{"model": "echo", "messages": ['), 400)
    assert_error(post(server, b"[" * 900 + b"]" * 900), 400)  # deep nesting, within the size cap
    assert_error(post(server, b"\xff\xfe not utf-8"), 400)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "echo"},  # no messages
        {"model": "echo", "messages": []},
        {"model": "echo", "messages": "hello"},
        {"model": "echo", "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": "echo", "messages": [{"role": "user"}]},
        {"model": "echo", "messages": [{"role": "user", "content": 42}]},
        {"messages": HI},  # no model
        {"model": "echo", "messages": HI, "temperature": "hot"},
        {"model": "echo", "messages": HI, "max_tokens": 0},
        {"model": "echo", "messages": HI, "max_tokens": "5"},
        {"model": "echo", "messages": HI, "n": 2},
        {"model": "echo", "messages": HI, "stream": "yes"},
        [1, 2, 3],
    ],
)
def test_invalid_fields_are_400(server, body):
    response = post(server, json.dumps(body).encode())
    message = assert_error(response, 400)
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "Traceback" not in message


def test_content_parts_are_joined(server):
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    body = {"model": "echo", "messages": [{"role": "user", "content": parts}]}
    assert post(server, body).json()["choices"][0]["message"]["content"] == "echo: ab"


def test_unknown_model_is_404(server):
    response = post(server, {"model": "gpt-4", "messages": HI})
    message = assert_error(response, 404, "model_not_found")
    assert "echo" in message and "broken" in message


def test_max_tokens_over_cap_is_400(server):
    message = assert_error(post(server, {"model": "echo", "messages": HI, "max_tokens": 65}), 400)
    assert "64" in message
    body = {"model": "echo", "messages": HI, "max_completion_tokens": 1000}
    assert_error(post(server, body), 400, "max_tokens_too_large")


def test_oversized_body_is_413(server):
    big = {"model": "echo", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_error(post(server, big), 413, "request_too_large")  # by Content-Length

    def chunks():  # chunked transfer: no Content-Length, the server counts
        for _ in range(3):
            yield b" " * 1000

    response = httpx.post(
        f"{server.url}/chat/completions", content=chunks(), headers=auth(), timeout=10
    )
    assert "transfer-encoding" in response.request.headers
    assert_error(response, 413, "request_too_large")


def test_unknown_routes_and_methods(server):
    assert_error(httpx.get(server.url.removesuffix("/v1") + "/admin"), 404, "not_found")
    assert_error(httpx.post(f"{server.url}/completions", headers=auth()), 404)
    assert_error(httpx.get(f"{server.url}/chat/completions", headers=auth()), 405)


def test_backend_failure_is_a_generic_500(server):
    response = post(server, {"model": "broken", "messages": HI})
    message = assert_error(response, 500)
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "failed" in message
    assert post(server, {"model": "echo", "messages": HI}).status_code == 200  # still serving


def test_streaming_through_openai_client(server):
    client = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0)
    whole = client.chat.completions.create(model="echo", messages=HI)
    chunks = list(client.chat.completions.create(model="echo", messages=HI, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) >= 4  # role, three words, finish
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content == "echo: hello there"
    assert chunks[-1].choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model="echo", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    assert list(streamed)[-1].usage.completion_tokens == 3


def test_raw_sse_ends_with_done(server):
    body = {"model": "echo", "messages": HI, "stream": True}
    response = post(server, body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_stream_errors_before_first_token_keep_their_status(server):
    response = post(server, {"model": "broken", "messages": HI, "stream": True})
    assert_error(response, 500)


# --- limits: time and queue ------------------------------------------------------------------


def test_timeout_is_504_and_ends_a_stream_with_length():
    slow = EchoBackend(delay_s=0.05)
    long_message = [{"role": "user", "content": " ".join(["word"] * 40)}]
    with start_server({"slow": slow}, port=0, limits=Limits(timeout_s=0.4)) as handle:
        # no api_key on loopback: requests without a key are served
        response = httpx.post(
            f"{handle.url}/chat/completions", json={"model": "slow", "messages": long_message}
        )
        assert "0.4" in assert_error(response, 504, "timeout")
        client = openai.OpenAI(base_url=handle.url, api_key="unused", max_retries=0)
        chunks = list(
            client.chat.completions.create(model="slow", messages=long_message, stream=True)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "length"
        assert text.startswith("echo: word") and len(text.split()) < 41


def test_client_leaving_a_stream_frees_the_model():
    slow = EchoBackend(delay_s=0.05)
    long_message = [{"role": "user", "content": " ".join(["word"] * 60)}]  # ~3 s to generate
    with start_server({"slow": slow}, port=0, limits=Limits(max_concurrent=1)) as handle:
        body = {"model": "slow", "messages": long_message, "stream": True}
        with httpx.stream("POST", f"{handle.url}/chat/completions", json=body) as response:
            assert next(response.iter_lines()).startswith("data: ")
        start = time.monotonic()  # the next request must not wait for the abandoned one
        answer = httpx.post(
            f"{handle.url}/chat/completions", json={"model": "slow", "messages": HI}
        )
        assert answer.status_code == 200 and time.monotonic() - start < 1.5


def test_full_queue_is_429_with_retry_after():
    gated = GatedBackend()
    limits = Limits(max_concurrent=1, max_queue=1)
    with start_server({"gated": gated}, port=0, api_key=KEY, limits=limits) as handle:
        body = {"model": "gated", "messages": HI}
        results: list[httpx.Response] = []
        workers = [threading.Thread(target=lambda: results.append(post(handle, body)))]
        workers[0].start()
        assert gated.started.wait(5)  # the first request is running
        workers.append(threading.Thread(target=lambda: results.append(post(handle, body))))
        workers[1].start()
        time.sleep(0.3)  # the second one is waiting in the queue
        refused = post(handle, body)
        gated.gate.set()
        for worker in workers:
            worker.join(10)
        assert_error(refused, 429, "queue_full")
        assert int(refused.headers["Retry-After"]) >= 1
        assert [r.status_code for r in results] == [200, 200]


def test_load_test_sends_whole_conversations_as_given():
    seen = []

    class Recording(EchoBackend):
        def chat(self, messages, **params):
            seen.append(messages)
            return super().chat(messages, **params)

    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}]
    with start_server({"echo": Recording()}, port=0, api_key=KEY) as h:
        report = load_test(h.url, KEY, "echo", [chat, "plain"], concurrency=1, requests=2)
    assert report["errors"] == 0
    assert sorted(map(len, seen)) == [1, 2] and chat in seen  # the system prompt went along


def test_load_test_on_fake_backend_has_no_errors():
    limits = Limits(max_concurrent=2, max_queue=32)
    with start_server({"echo": EchoBackend(0.002)}, port=0, api_key=KEY, limits=limits) as h:
        report = load_test(h.url, KEY, "echo", ["a b c", "d e"], concurrency=8, requests=32)
    print("\nfake backend load test:", report)
    assert report["requests"] == 32 and report["concurrency"] == 8
    assert report["errors"] == 0, report["error_samples"]
    assert 0 < report["p50_s"] <= report["p95_s"] and report["wall_s"] > 0
    assert report["tokens_per_s"] > 0


# --- configuration: exposure, ports, vLLM ----------------------------------------------------


def test_non_loopback_host_needs_an_api_key():
    with pytest.raises(ValueError, match="api_key=secrets.token_urlsafe"):
        start_server({"echo": EchoBackend()}, host="0.0.0.0", port=0)
    with pytest.raises(ValueError, match="api_key"):
        start_server({"echo": EchoBackend()}, host="192.168.1.5", port=0)
    with pytest.raises(ValueError, match="api_key"):
        vllm_command("Qwen/Qwen2.5-0.5B-Instruct", "adapter", host="0.0.0.0")
    with pytest.raises(ValueError, match="empty"):
        start_server({"echo": EchoBackend()}, port=0, api_key="  ")


def test_ipv6_loopback_url():
    with start_server({"echo": EchoBackend()}, host="::1", port=0) as handle:
        assert handle.url.startswith("http://[::1]:")
        assert httpx.get(f"{handle.url}/models").status_code == 200
    assert not handle.running


def test_busy_port_error_says_what_to_do(server):
    with pytest.raises(OSError, match="port=0"):
        start_server({"echo": EchoBackend()}, port=server.port)


def test_create_app_needs_models():
    with pytest.raises(ValueError, match="at least one model"):
        create_app({}, None)
    with pytest.raises(ValueError, match="max_concurrent"):
        Limits(max_concurrent=0)


def test_default_port(monkeypatch):
    monkeypatch.setattr("helpers.env.detect_platform", lambda: "autodl")
    assert default_port() == 6006
    monkeypatch.setattr("helpers.env.detect_platform", lambda: "local")
    assert default_port() == 8000


T4 = GpuInfo("Tesla T4", 14.7, (7, 5), bf16=False)
RTX_4090 = GpuInfo("NVIDIA GeForce RTX 4090", 23.6, (8, 9), bf16=True)


def _flag(cmd: VllmCommand, name: str) -> str:
    return cmd.argv[cmd.argv.index(name) + 1]


def test_vllm_command(tmp_path, monkeypatch):
    monkeypatch.setattr("helpers.env.detect_platform", lambda: "local")
    monkeypatch.setattr("helpers.env.gpu_info", lambda: RTX_4090)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 24}))
    cmd = vllm_command("Qwen/Qwen2.5-0.5B-Instruct", adapter, key_file=tmp_path / "k")
    assert cmd.argv[:3] == ["vllm", "serve", "Qwen/Qwen2.5-0.5B-Instruct"]
    assert "--enable-lora" in cmd.argv
    assert _flag(cmd, "--lora-modules") == f"tuned={adapter.resolve()}"
    assert _flag(cmd, "--served-model-name") == "base" and _flag(cmd, "--max-lora-rank") == "32"
    assert _flag(cmd, "--host") == "127.0.0.1" and _flag(cmd, "--port") == "8000"
    assert _flag(cmd, "--max-model-len") == "2048"
    assert _flag(cmd, "--gpu-memory-utilization") == "0.85"
    assert "--max-num-seqs" in cmd.argv
    # greedy requests stay greedy: not the sampling defaults of the model's generation_config.json
    assert _flag(cmd, "--generation-config") == "vllm"
    assert cmd.key_file is None and cmd.env() == {} and "--api-key" not in cmd.argv
    assert not (tmp_path / "k").exists()  # no key, no key file
    plain = vllm_command("base/model", tmp_path / "missing", port=9000)
    assert "--max-lora-rank" not in plain.argv and _flag(plain, "--port") == "9000"
    with pytest.raises(ValueError, match="base"):
        vllm_command("base/model", adapter, served_name="base")


@pytest.mark.parametrize(
    ("gpu", "dtype"), [(T4, "half"), (RTX_4090, "bfloat16"), (None, None)], ids=["t4", "24g", "cpu"]
)
def test_vllm_dtype_follows_the_gpu(tmp_path, monkeypatch, gpu, dtype):
    monkeypatch.setattr("helpers.env.gpu_info", lambda: gpu)
    cmd = vllm_command("Qwen/Qwen2.5-1.5B-Instruct", tmp_path, port=8001)
    if dtype is None:  # no GPU here: vLLM chooses on the machine that runs it
        assert "--dtype" not in cmd.argv
    else:  # a T4 has no native bf16: fp16, as it trained; Ampere and newer: bf16
        assert _flag(cmd, "--dtype") == dtype
    assert _flag(vllm_command("m", tmp_path, port=1, dtype="float32"), "--dtype") == "float32"
    with pytest.raises(ValueError, match="bfloat16"):
        vllm_command("m", tmp_path, port=1, dtype="bf16")


def test_vllm_command_keeps_the_key_out_of_argv_and_output_and_runs(tmp_path, monkeypatch):
    monkeypatch.setattr("helpers.env.gpu_info", lambda: T4)
    key = secrets.token_urlsafe(24)
    key_file = tmp_path / "my keys" / "vllm key"  # spaces: the line must quote the path
    cmd = vllm_command(
        "Qwen/Qwen2.5-1.5B-Instruct", tmp_path, port=8001, api_key=key, key_file=key_file
    )
    assert key_file.read_text() == key and cmd.key_file == key_file.resolve()
    if os.name == "posix":
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    line = str(cmd)
    assert key not in line and key not in " ".join(cmd.argv) and key not in repr(cmd)
    assert "$API_KEY" not in line and cmd.env() == {"VLLM_API_KEY": key}
    # The printed line runs as it is in a shell that defines nothing: a fake `vllm` shows what
    # the real one would get (vLLM reads VLLM_API_KEY when --api-key is absent).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vllm"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$VLLM_API_KEY" "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    ran = subprocess.run(["sh", "-c", line], env=env, capture_output=True, text=True, check=True)
    assert ran.stdout.splitlines() == [key, *cmd.argv[1:]]
    # the key file is rewritten private even when it existed with looser permissions
    key_file.chmod(0o644)
    vllm_command("m", tmp_path, port=1, api_key="other", key_file=key_file)
    assert key_file.read_text() == "other"
    if os.name == "posix":
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_vllm_key_file_defaults_to_the_home_folder(tmp_path, monkeypatch):
    # not outputs/: on Colab that is Google Drive, and a key must not be synced anywhere
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setattr("helpers.env.gpu_info", lambda: None)
    cmd = vllm_command("m", tmp_path, port=8001, api_key="k")
    assert cmd.key_file == (tmp_path / "home" / ".cache" / "llm-course" / "vllm-api-key")
    assert cmd.key_file.read_text() == "k" and not (tmp_path / "outputs").exists()


# --- chat templates render in the sandbox ------------------------------------------------------

SSTI = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
]


@pytest.mark.parametrize("template", SSTI)
def test_template_injection_is_blocked(template):
    formatter = sandboxed_formatter(template, eos_token="<|im_end|>", bos_token="")
    with pytest.raises(jinja2.exceptions.SecurityError):
        formatter(messages=HI)


def test_harmless_dunder_renders_empty():
    formatter = sandboxed_formatter("{{ messages.__class__ }}ok", "<|im_end|>", "")
    assert formatter(messages=HI).prompt == "ok"


# --- the real llama.cpp backend on a tiny GGUF ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_backend(tiny_gguf):
    backend = LlamaCppBackend(tiny_gguf, n_ctx=512)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def tiny_server(tiny_backend):
    limits = Limits(max_tokens=64, max_concurrent=1, max_queue=64)
    with start_server({"tiny": tiny_backend}, port=0, api_key=KEY, limits=limits) as handle:
        yield handle


def direct_answer(backend, messages, **params) -> tuple[str, ChatResult]:
    defaults = {"max_tokens": 24, "temperature": 0.0, "top_p": 1.0, "stop": []}
    items = list(backend.chat(messages, deadline=time.monotonic() + 60, **{**defaults, **params}))
    return "".join(i for i in items if isinstance(i, str)), items[-1]


def test_backend_uses_the_gguf_template_in_the_sandbox(tiny_backend):
    template = tiny_backend.llm.metadata["tokenizer.chat_template"]
    assert tiny_backend.formatter.template == template
    environment = tiny_backend.formatter._environment.environment
    assert isinstance(environment, jinja2.sandbox.ImmutableSandboxedEnvironment)
    assert tiny_backend.eos_token == "<|im_end|>" and tiny_backend.eos_id in tiny_backend.stop_ids
    assert tiny_backend.end_of_turn == "<|im_end|>"


def test_prompt_equals_transformers_chat_template(tiny_backend, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    conversations = [
        HI,
        [{"role": "system", "content": "你是客服助手。"}, {"role": "user", "content": "订单呢？"}],
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
    ]
    for messages in conversations:
        expected = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        assert tiny_backend.render_prompt(messages) == expected


def test_greedy_server_answer_equals_backend(tiny_backend, tiny_server):
    text, result = direct_answer(tiny_backend, HI)
    client = openai.OpenAI(base_url=tiny_server.url, api_key=KEY, max_retries=0)
    answer = client.chat.completions.create(model="tiny", messages=HI, max_tokens=24, temperature=0)
    assert answer.choices[0].message.content == text
    assert answer.usage.prompt_tokens == result.prompt_tokens > 0
    assert answer.usage.completion_tokens == result.completion_tokens <= 24
    stream = client.chat.completions.create(
        model="tiny", messages=HI, max_tokens=24, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == answer.choices[0].finish_reason


def test_each_request_starts_from_an_empty_cache(tiny_backend, monkeypatch):
    """No prefix reuse between requests: a repeated greedy request is evaluated the same way.

    (Reusing the cached prefix evaluates the prompt's tail in another batch shape; on a real
    q4_k_m model that flipped a near-tie and changed the greedy answer.)
    """
    evaluated: list[int] = []
    eval_tokens = tiny_backend.llm.eval
    monkeypatch.setattr(
        tiny_backend.llm, "eval", lambda t: (evaluated.append(len(t)), eval_tokens(t))[1]
    )
    first, _ = direct_answer(tiny_backend, HI, max_tokens=4)
    prompt_batch = evaluated[0]
    evaluated.clear()
    second, _ = direct_answer(tiny_backend, HI, max_tokens=4)
    assert evaluated[0] == prompt_batch, "the second request reused the first one's cache"
    assert first == second


def test_stop_strings_cut_the_answer(tiny_backend, tiny_server):
    text, _ = direct_answer(tiny_backend, HI)
    assert len(text) >= 6, f"the tiny model's greedy answer is too short: {text!r}"
    stop = text[3:5]
    body = {"model": "tiny", "messages": HI, "max_tokens": 24, "temperature": 0, "stop": [stop]}
    choice = post(tiny_server, body).json()["choices"][0]
    assert choice["message"]["content"] == text[: text.find(stop)]
    assert choice["finish_reason"] == "stop"


def test_prompt_longer_than_context_is_400(tiny_server):
    long_message = [{"role": "user", "content": "hello world " * 600}]
    body = {"model": "tiny", "messages": long_message, "max_tokens": 4}
    response = httpx.post(
        f"{tiny_server.url}/chat/completions", json=body, headers=auth(), timeout=30
    )
    assert "n_ctx" in assert_error(response, 400, "context_length_exceeded")


def test_templates_that_fail_or_refuse(tiny_gguf):
    evil = LlamaCppBackend(tiny_gguf, n_ctx=256)
    evil.formatter = sandboxed_formatter(SSTI[0], evil.eos_token, evil.bos_token)
    strict = LlamaCppBackend(tiny_gguf, n_ctx=256)
    refusal = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    strict.formatter = sandboxed_formatter(refusal, strict.eos_token, strict.bos_token)
    with start_server({"evil": evil, "strict": strict}, port=0) as handle:
        url = f"{handle.url}/chat/completions"
        executed = httpx.post(url, json={"model": "evil", "messages": HI}, timeout=30)
        refused = httpx.post(url, json={"model": "strict", "messages": HI}, timeout=30)
    evil.close()
    strict.close()
    assert_error(executed, 500)  # the sandbox stopped the template: nothing ran, nothing leaked
    assert "subclasses" not in executed.text and "class" not in executed.text
    assert "roles must alternate" in assert_error(refused, 400)  # the client can fix this one


def test_start_server_loads_gguf_paths(tiny_gguf):
    with start_server({"tiny": str(tiny_gguf)}, port=0) as handle:
        (backend,) = handle._owned
        body = {"model": "tiny", "messages": HI, "max_tokens": 4, "temperature": 0}
        assert (
            httpx.post(f"{handle.url}/chat/completions", json=body, timeout=30).status_code == 200
        )
    assert backend._closing.is_set() and not handle._owned  # stop() freed the model it loaded
    with pytest.raises(FileNotFoundError, match="notebook 05"):
        start_server({"tiny": tiny_gguf.with_name("missing.gguf")}, port=0)


def test_load_test_on_tiny_gguf(tiny_server):
    prompts = ["你好", "hello", "订单什么时候到？", "thanks"]
    report = load_test(
        tiny_server.url, KEY, "tiny", prompts, concurrency=8, max_tokens=8, requests=32
    )
    print("\ntiny GGUF load test:", report)
    assert report["errors"] == 0, report["error_samples"]
    assert report["p50_s"] <= report["p95_s"] and report["tokens_per_s"] > 0
