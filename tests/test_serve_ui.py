"""Ollama Modelfiles, launch_ui's safety rule, and the side-by-side chat UI in a real browser."""

import ipaddress
import os
import re
import shutil
import socket
import time
from types import SimpleNamespace
from unittest import mock

import jinja2
import pytest

from helpers.models import CHATML_TEMPLATE, GEMMA_TEMPLATE
from helpers.serve.backend import ChatResult
from helpers.serve.ollama import (
    STOP_STRINGS,
    TEMPLATES,
    modelfile,
    template_kind,
    write_modelfile,
)
from helpers.serve.server import is_loopback
from helpers.serve.ui import EMPTY_ANSWER, ERROR_PREFIX, _api_messages, launch_ui

HF_TEMPLATES = {"chatml": CHATML_TEMPLATE, "gemma": GEMMA_TEMPLATE}

# --- Ollama Modelfile --------------------------------------------------------------------------


def test_modelfile_chatml_exact():
    assert modelfile("outputs/tuned-q4_k_m.gguf", template_kind="chatml") == (
        "FROM ./tuned-q4_k_m.gguf\n"
        "\n"
        'TEMPLATE """{{ range .Messages }}<|im_start|>{{ .Role }}\n'
        "{{ .Content }}<|im_end|>\n"
        '{{ end }}<|im_start|>assistant\n"""\n'
        "\n"
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop "<|im_start|>"\n'
        "PARAMETER temperature 0\n"
    )


def test_modelfile_gemma_exact_with_system_and_params():
    text = modelfile(
        "gemma-tuned.gguf",
        template_kind="gemma",
        system="你是客服助手。",
        params={"temperature": 0.7, "num_ctx": 4096},
    )
    assert text == (
        "FROM ./gemma-tuned.gguf\n"
        "\n"
        'TEMPLATE """{{ $system := "" }}{{ range .Messages }}'
        '{{ if eq .Role "system" }}{{ $system = .Content }}'
        '{{ else if eq .Role "assistant" }}<start_of_turn>model\n'
        "{{ .Content }}<end_of_turn>\n"
        "{{ else }}<start_of_turn>user\n"
        '{{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>\n'
        '{{ end }}{{ end }}<start_of_turn>model\n"""\n'
        "\n"
        'PARAMETER stop "<end_of_turn>"\n'
        "PARAMETER temperature 0.7\n"
        "PARAMETER num_ctx 4096\n"
        "\n"
        'SYSTEM """你是客服助手。"""\n'
    )


def _render_hf(template: str, messages: list[dict], cue: bool = False) -> str:
    """A course chat template rendered as transformers would (generation tags dropped, no BOS)."""
    plain = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)
    env = jinja2.Environment()
    return env.from_string(plain).render(messages=messages, bos_token="", add_generation_prompt=cue)


@pytest.mark.parametrize("kind", ["chatml", "gemma"])
def test_stop_strings_are_the_templates_end_of_turn(kind):
    end_of_turn = STOP_STRINGS[kind][0]
    turns = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]
    after_answer = _render_hf(HF_TEMPLATES[kind], turns).split("A1", 1)[1]
    assert after_answer.strip() == end_of_turn  # what the model was trained to end a turn with
    assert "{{ .Content }}" + end_of_turn in TEMPLATES[kind]
    # and the Go template ends with the same reply cue as the Hugging Face one
    prompt = _render_hf(HF_TEMPLATES[kind], turns[:1], cue=True)
    assert TEMPLATES[kind].endswith("{{ end }}" + prompt.split(end_of_turn + "\n", 1)[1])


@pytest.mark.parametrize("kind", ["chatml", "gemma"])
def test_template_kind_detects_the_course_templates(kind):
    assert template_kind(HF_TEMPLATES[kind]) == kind


def test_template_kind_rejects_unknown_and_ambiguous_templates():
    llama3 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}"
    with pytest.raises(ValueError, match="Unknown chat template.*template_kind="):
        template_kind(llama3)
    with pytest.raises(ValueError, match="both"):
        template_kind("<|im_start|> <start_of_turn>")
    with pytest.raises(ValueError, match="tokenizer.chat_template"):
        template_kind(None)


def test_modelfile_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'chatml', 'gemma'"):
        modelfile("m.gguf", template_kind="llama3")
    with pytest.raises(ValueError, match="not a .gguf file"):
        modelfile("outputs/merged", template_kind="chatml")
    with pytest.raises(ValueError, match="stop"):
        modelfile("m.gguf", template_kind="chatml", params={"stop": "x"})
    with pytest.raises(ValueError, match='"""'):
        modelfile("m.gguf", template_kind="chatml", system='say """hi"""')


def test_write_modelfile_paths(tmp_path):
    gguf = tmp_path / "gguf" / "tuned-q8_0.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    beside = write_modelfile(gguf, template_kind="chatml")
    assert beside == gguf.parent / "Modelfile"
    assert beside.read_text().splitlines()[0] == "FROM ./tuned-q8_0.gguf"
    elsewhere = write_modelfile(gguf, tmp_path / "ollama", template_kind="gemma")
    assert elsewhere.read_text().splitlines()[0] == "FROM ../gguf/tuned-q8_0.gguf"
    with pytest.raises(FileNotFoundError, match="Export the model first"):
        write_modelfile(tmp_path / "missing.gguf", template_kind="chatml")


# --- launch_ui's safety rule, history handling --------------------------------------------------


def test_loopback_hosts():
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "127.0.0.2"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "my-host"]))


def _fake_demo() -> mock.Mock:
    demo = mock.Mock()
    demo.launch.return_value = (None, "http://localhost:6006/", None)
    return demo


def test_launch_ui_refuses_a_public_host_without_auth():
    demo = _fake_demo()
    with pytest.raises(ValueError, match="auth=\\('learner'"):
        launch_ui(demo, host="0.0.0.0")
    with pytest.raises(ValueError, match="username, password"):
        launch_ui(demo, host="0.0.0.0", auth=("learner", ""))
    demo.launch.assert_not_called()


def test_launch_ui_on_autodl_uses_6006_no_share_no_blocking(monkeypatch):
    monkeypatch.setattr("helpers.env.detect_platform", lambda *a, **k: "autodl")
    demo = _fake_demo()
    url = launch_ui(demo, host="0.0.0.0", auth=("learner", "pw"))
    assert url == "http://localhost:6006/"
    kwargs = demo.launch.call_args.kwargs
    assert kwargs["server_port"] == 6006 and kwargs["server_name"] == "0.0.0.0"
    assert kwargs["share"] is False and kwargs["prevent_thread_lock"] is True
    assert kwargs["auth"] == ("learner", "pw")


def test_history_sent_to_the_model_leaves_out_failed_turns():
    history = [  # Gradio 6 hands content back as a list of typed parts
        {"role": "user", "content": [{"type": "text", "text": "Q1"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": ERROR_PREFIX + "**tuned**: HTTP 429"},
    ]
    assert _api_messages(history, "SYS") == [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
    ]


# --- the UI in a real browser ------------------------------------------------------------------


def find_chromium() -> str | None:
    """A Chromium (or Chrome) binary Playwright can drive: Debian's `chromium` package, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def browser_or_skip() -> str:
    """The browser's path; skips when there is none, fails instead if COURSE_REQUIRE_BROWSER=1."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright Python package is not installed (pip install playwright)"
    path = find_chromium()
    if path is None:
        missing = "no chromium on PATH (Debian/Ubuntu: apt-get install -y chromium)"
    if missing:
        if os.environ.get("COURSE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"COURSE_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser, checked before the (slower) model fixtures are built."""
    return browser_or_skip()


@pytest.fixture
def loopback_only(monkeypatch):
    """Connections beyond this machine fail and are recorded: the UI must work offline."""
    real_connect = socket.socket.connect
    outside: list = []

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                local = host == "localhost" or ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = False
            if not local:
                outside.append(address)
                raise OSError(f"test: no connections beyond loopback ({address})")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return outside


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Both columns show a non-empty assistant message, and the answer has finished streaming
# (Gradio hides an output's status tracker when its event is done).
_BOTH_ANSWERED = """() => ['chat-base', 'chat-tuned'].every(id => {
    const bots = document.querySelectorAll(`#${id} [data-testid="bot"]`);
    const tracker = document.querySelector(`#${id} [data-testid="status-tracker"]`);
    return bots.length > 0 && bots[bots.length - 1].innerText.trim().length > 0
        && (!tracker || tracker.classList.contains('hide'));
})"""


def _column(page, elem_id: str) -> tuple[list[str], list[str]]:
    """(user texts, assistant texts) shown in one chat column."""
    users = page.locator(f'#{elem_id} [data-testid="user"]').all_inner_texts()
    bots = page.locator(f'#{elem_id} [data-testid="bot"]').all_inner_texts()
    return [u.strip() for u in users], [b.strip() for b in bots]


def test_chat_ui_in_a_browser(chromium, tiny_gguf, tmp_path, loopback_only):
    from playwright.sync_api import sync_playwright

    from helpers.serve.server import start_server
    from helpers.serve.ui import chat_ui

    started = time.monotonic()
    prompt = "你好，请介绍一下你自己"
    with (
        start_server({"base": tiny_gguf, "tuned": tiny_gguf}, port=0, api_key="k") as server,
        sync_playwright() as pw,
    ):
        demo = chat_ui(server.url, server.api_key, max_tokens=24)
        wrong_key = chat_ui(server.url, "not-the-key", max_tokens=8)
        try:
            url = launch_ui(demo, port=_free_port(), inline=False)
            bad_url = launch_ui(wrong_key, port=_free_port(), inline=False)
            assert url.startswith("http://127.0.0.1:")
            browser = pw.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("#prompt textarea").fill(prompt)
            page.locator("#send").click()
            page.wait_for_function(_BOTH_ANSWERED, timeout=30_000)
            for elem_id in ("chat-base", "chat-tuned"):
                users, bots = _column(page, elem_id)
                assert users == [prompt]
                assert len(bots) == 1 and bots[0], f"{elem_id}: no answer"
                assert not bots[0].startswith((ERROR_PREFIX.strip(), "（")), bots[0]
            assert page.locator("#prompt textarea").input_value() == ""  # cleared for the next
            shot = tmp_path / "chat.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 1000
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

            # A wrong API key shows up in the chat, with what to do about it.
            page.goto(bad_url)
            page.locator("#prompt textarea").fill("hi")
            page.locator("#prompt textarea").press("Enter")
            page.wait_for_function(_BOTH_ANSWERED, timeout=30_000)
            for elem_id in ("chat-base", "chat-tuned"):
                _, bots = _column(page, elem_id)
                assert "HTTP 401" in bots[0] and "api_key" in bots[0], bots[0]
            browser.close()
        finally:
            demo.close()
            wrong_key.close()
    assert loopback_only == [], f"tried to reach the internet: {loopback_only}"
    assert time.monotonic() - started < 60


class _Scripted:
    """A server backend that answers with fixed pieces (no model needed)."""

    def __init__(self, *pieces: str):
        self.pieces = pieces
        self.seen: list[dict] = []  # the messages of the last request

    def chat(self, messages, **params):
        self.seen = messages
        yield from self.pieces
        yield ChatResult("stop", 1, len(self.pieces))


def _fns(demo) -> dict:
    """The UI's event functions by name (ask, respond, clear_chat)."""
    return {getattr(f.fn, "__name__", ""): f.fn for f in demo.fns.values()}


_SESSION = SimpleNamespace(session_hash="test")  # what Gradio passes as the gr.Request


def _send(demo, message: str, max_tokens: int = 16) -> tuple[list, list]:
    """Both columns after sending ``message`` on a fresh page, called as Gradio would."""
    fns, session = _fns(demo), _SESSION
    base, tuned, box = fns["ask"](message, [], [], request=session)
    assert box.value == "" and box.interactive is False  # locked until both have answered
    *_, last = fns["respond"](base, tuned, max_tokens, request=session)
    return last


def test_answers_empty_answers_and_errors_land_in_their_column():
    import gradio as gr

    from helpers.serve.server import start_server
    from helpers.serve.ui import chat_ui

    backends = {"base": _Scripted("Hel", "lo", "!"), "tuned": _Scripted()}
    with start_server(backends, port=0, api_key="k") as server:
        demo = chat_ui(server.url, "k", system="SYS")
        base, tuned = _send(demo, "  hi ")
        assert base == [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
        ]
        assert backends["base"].seen == [
            {"role": "system", "content": "SYS"},
            {"role": "user", "content": "hi"},
        ]
        assert tuned[-1]["content"] == EMPTY_ANSWER.format("stop")
        # Clear between the question and the answers: nothing is generated or shown
        fns = _fns(demo)
        asked = fns["ask"]("again", base, tuned, request=_SESSION)
        assert fns["clear_chat"](request=_SESSION) == ([], [], "")
        assert list(fns["respond"](*asked[:2], 16, request=_SESSION)) == [gr.skip()]
        # an unknown model name: that column says so and how to fix it; the other answers
        demo = chat_ui(server.url, "k", models=("base", "nope"))
        base, missing = _send(demo, "hi")
        assert base[-1]["content"] == "Hello!"
        assert missing[-1]["content"].startswith(ERROR_PREFIX + "**nope**: HTTP 404")
        assert "chat_ui(models=...)" in missing[-1]["content"]
        # the server's token limit, exceeded from the slider
        too_many, _ = _send(demo, "hi", max_tokens=10_000)
        assert "HTTP 400" in too_many[-1]["content"] and "max tokens" in too_many[-1]["content"]
