"""Ollama Modelfiles, launch_ui's safety rule, and the side-by-side chat UI in a real browser."""

import importlib.resources
import ipaddress
import json
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
    default_system,
    modelfile,
    template_kind,
    write_modelfile,
)
from helpers.serve.server import is_loopback
from helpers.serve.ui import EMPTY_ANSWER, ERROR_PREFIX, _api_messages, launch_ui

HF_TEMPLATES = {"chatml": CHATML_TEMPLATE, "gemma": GEMMA_TEMPLATE}
# Qwen2.5-Instruct's chat template as TRL ships it (the t4 and 24g profiles' models).
QWEN2_5_TEMPLATE = (
    importlib.resources.files("trl") / "chat_templates" / "qwen2_5.jinja"
).read_text()
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

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
    beside = write_modelfile(gguf, template_kind="chatml", chat_template=CHATML_TEMPLATE)
    assert beside == gguf.parent / "Modelfile"
    assert beside.read_text().splitlines()[0] == "FROM ./tuned-q8_0.gguf"
    elsewhere = write_modelfile(
        gguf, tmp_path / "ollama", template_kind="gemma", chat_template=None
    )
    assert elsewhere.read_text().splitlines()[0] == "FROM ../gguf/tuned-q8_0.gguf"
    with pytest.raises(FileNotFoundError, match="Export the model first"):
        write_modelfile(tmp_path / "missing.gguf", template_kind="chatml")


def test_default_system_is_what_the_template_adds_without_one():
    assert default_system(QWEN2_5_TEMPLATE) == QWEN_DEFAULT_SYSTEM
    assert default_system(CHATML_TEMPLATE) is None  # the course's own: no system turn
    assert default_system(GEMMA_TEMPLATE) is None  # system text joins the first user turn
    refuses = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
    )
    assert default_system(refuses + "{{ messages[-1]['content'] }}") is None


def test_write_modelfile_takes_the_default_system_from_the_gguf(tmp_path, monkeypatch):
    gguf = tmp_path / "tuned-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF")
    read = []
    monkeypatch.setattr(
        "helpers.quantize.gguf_info",
        lambda path: read.append(path) or {"chat_template": QWEN2_5_TEMPLATE},
    )
    text = write_modelfile(gguf, template_kind="chatml").read_text()
    assert read == [gguf]
    assert text.endswith(f'SYSTEM """{QWEN_DEFAULT_SYSTEM}"""\n')
    # an explicit system prompt wins over the template's default
    own = write_modelfile(gguf, template_kind="chatml", system="你是客服助手。").read_text()
    assert 'SYSTEM """你是客服助手。"""' in own and "Qwen" not in own


def test_write_modelfile_reads_a_real_gguf(tiny_gguf, tmp_path):
    from helpers.quantize import gguf_info

    chat_template = gguf_info(tiny_gguf)["chat_template"]
    kind = template_kind(chat_template)
    text = write_modelfile(tiny_gguf, tmp_path, template_kind=kind).read_text()
    assert text == modelfile(
        tiny_gguf, template_kind=kind, chat_template=chat_template, modelfile_dir=tmp_path
    )
    assert "SYSTEM" not in text  # the tiny model's ChatML template adds no system prompt


# A small interpreter for the part of Go's text/template the Modelfile templates use (range,
# if / else if / else, eq, variables, fields, string literals), so the tests render them as
# Ollama would without Go. Anything else fails loudly.
_GO_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)
_GO_ARG = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')


def _go_parse(parts: list[str], i: int = 0) -> tuple[list, int, str | None]:
    """Nodes from parts[i:] up to an {{ end }} / {{ else ... }}; (nodes, next i, that action)."""
    nodes: list = []
    while i < len(parts):
        if i % 2 == 0:  # literal text between actions
            nodes.append(("text", parts[i]))
            i += 1
            continue
        action = parts[i].strip()
        i += 1
        if action.startswith("-") or action.endswith("-"):
            raise NotImplementedError(f"whitespace trimming: {{{{{action}}}}}")
        if action == "end" or action == "else" or action.startswith("else if "):
            return nodes, i, action
        if action.startswith("range "):
            body, i, stop = _go_parse(parts, i)
            assert stop == "end", stop
            nodes.append(("range", action[len("range ") :], body))
        elif action.startswith("if "):
            branches, condition = [], action[len("if ") :]
            while True:
                body, i, stop = _go_parse(parts, i)
                branches.append((condition, body))
                if stop == "end":
                    break
                condition = stop[len("else if ") :] if stop.startswith("else if ") else "true"
            nodes.append(("if", branches))
        elif m := re.fullmatch(r"(\$\w+)\s*:?=\s*(.+)", action, re.S):
            nodes.append(("set", m[1], m[2]))
        else:
            nodes.append(("print", action))
    return nodes, i, None


def _go_value(expr: str, dot: dict, variables: dict):
    args = _GO_ARG.findall(expr.strip())
    if args[0] == "eq":
        left, right = (_go_value(a, dot, variables) for a in args[1:])
        return left == right
    (arg,) = args
    if arg == "true":
        return True
    if arg.startswith('"'):
        return json.loads(arg)
    if arg.startswith("$"):
        return variables[arg]
    if arg.startswith("."):
        return dot[arg[1:]]
    raise NotImplementedError(expr)


def _go_run(nodes: list, dot: dict, variables: dict, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "print":
            out.append(str(_go_value(node[1], dot, variables)))
        elif kind == "set":  # Go 1.11+: `=` inside range assigns the outer variable
            variables[node[1]] = _go_value(node[2], dot, variables)
        elif kind == "range":
            for item in _go_value(node[1], dot, variables):
                _go_run(node[2], item, variables, out)
        else:
            for condition, body in node[1]:
                if _go_value(condition, dot, variables):  # "" and False are false, as in Go
                    _go_run(body, dot, variables, out)
                    break


def render_go(template: str, data: dict) -> str:
    """``template`` executed with ``data`` as Go's text/template would (the subset above)."""
    nodes, _, stop = _go_parse(_GO_ACTION.split(template))
    assert stop is None, f"unbalanced {{{{ {stop} }}}}"
    out: list[str] = []
    _go_run(nodes, data, {}, out)
    return "".join(out)


def ollama_prompt(modelfile_text: str, messages: list[dict]) -> str:
    """The prompt Ollama's chat endpoint builds from a Modelfile and a request's messages.

    server/routes.go puts the Modelfile's SYSTEM first when the request's first message is not
    a system message; template.go's collate joins consecutive same-role messages with a blank
    line; the template then runs over .Messages.
    """
    template = re.search(r'^TEMPLATE """(.*?)"""$', modelfile_text, re.S | re.M)[1]
    system = re.search(r'^SYSTEM """(.*?)"""$', modelfile_text, re.S | re.M)
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system[1]}, *messages]
    collated: list[dict] = []
    for message in messages:
        if collated and collated[-1]["Role"] == message["role"]:
            collated[-1]["Content"] += "\n\n" + message["content"]
        else:
            collated.append({"Role": message["role"], "Content": message["content"]})
    return render_go(template, {"Messages": collated})


def test_go_interpreter_renders_go_semantics():
    template = (
        '{{ $s := "" }}{{ range .Messages }}{{ if eq .Role "system" }}{{ $s = .Content }}'
        '{{ else if $s }}[{{ $s }}]{{ .Content }}{{ $s = "" }}{{ else }}{{ .Content }}{{ end }}'
        "{{ end }}!"
    )
    data = {"Messages": [{"Role": "system", "Content": "S"}, {"Role": "user", "Content": "a"}]}
    data["Messages"].append({"Role": "user", "Content": "b"})
    assert render_go(template, data) == "[S]ab!"
    with pytest.raises(NotImplementedError):
        render_go("{{- .X }}", {"X": 1})


CONVERSATIONS = {
    "no system": [{"role": "user", "content": "你是谁？"}],
    "no system, two turns": [
        {"role": "user", "content": "订单 A1024 退款什么时候到账？"},
        {"role": "assistant", "content": '{"intent": "refund"}'},
        {"role": "user", "content": "谢谢"},
    ],
    "own system": [
        {"role": "system", "content": "你是客服助手，只输出 JSON。"},
        {"role": "user", "content": "退款"},
    ],
}


def _render_transformers(template: str, messages: list[dict]) -> str:
    """What training, vLLM and (tests/test_serve.py checks) llama.cpp render: the HF template."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        [messages], chat_template=template, add_generation_prompt=True
    )
    return rendered[0]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=list(CONVERSATIONS))
@pytest.mark.parametrize("name", ["qwen2.5", "chatml", "gemma"])
def test_ollama_renders_what_training_rendered(name, conversation):
    chat_template = {"qwen2.5": QWEN2_5_TEMPLATE, **HF_TEMPLATES}[name]
    kind = template_kind(chat_template)
    text = modelfile("tuned.gguf", template_kind=kind, chat_template=chat_template)
    messages = CONVERSATIONS[conversation]
    assert ollama_prompt(text, messages) == _render_transformers(chat_template, messages)


def test_without_the_default_system_ollama_renders_qwen_differently():
    bare = modelfile("tuned.gguf", template_kind="chatml")  # the Modelfile before the fix
    messages = CONVERSATIONS["no system"]
    assert "SYSTEM" not in bare
    assert ollama_prompt(bare, messages) != _render_transformers(QWEN2_5_TEMPLATE, messages)


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


def test_launch_ui_on_autodl_by_default_listens_for_the_proxy_behind_a_login(monkeypatch, capsys):
    monkeypatch.setattr("helpers.env.detect_platform", lambda *a, **k: "autodl")
    demo = _fake_demo()
    launch_ui(demo)
    kwargs = demo.launch.call_args.kwargs
    # AutoDL's 自定义服务 connects from outside the container: loopback would be unreachable
    assert kwargs["server_name"] == "0.0.0.0" and kwargs["server_port"] == 6006
    user, password = kwargs["auth"]
    assert user == "learner" and len(password) >= 16
    assert kwargs["inline"] is False  # an inline frame would point at the browser's localhost
    printed = capsys.readouterr().out
    assert password in printed and "自定义服务" in printed and "auth=" in printed
    # a fresh password each launch; a login of your own is used as given
    launch_ui(demo)
    assert demo.launch.call_args.kwargs["auth"][1] != password
    launch_ui(demo, auth=("me", "secret"))
    assert demo.launch.call_args.kwargs["auth"] == ("me", "secret")
    assert "secret" not in capsys.readouterr().out
    # an explicit public host still needs an explicit login
    with pytest.raises(ValueError, match="auth="):
        launch_ui(demo, host="0.0.0.0")


def test_launch_ui_elsewhere_stays_on_loopback_without_a_login(monkeypatch, capsys):
    monkeypatch.setattr("helpers.env.detect_platform", lambda *a, **k: "colab")
    demo = _fake_demo()
    launch_ui(demo)
    kwargs = demo.launch.call_args.kwargs
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["auth"] is None
    assert kwargs["server_port"] is None and kwargs["inline"] is None
    assert "password" not in capsys.readouterr().out


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

    from helpers.monitor.log import RequestLog
    from helpers.serve.server import start_server
    from helpers.serve.ui import chat_ui

    started = time.monotonic()
    prompt = "你好，请介绍一下你自己"
    log = RequestLog(tmp_path / "requests.db")
    models = {"base": tiny_gguf, "tuned": tiny_gguf}
    with (
        start_server(models, port=0, api_key="k", log=log) as server,
        sync_playwright() as pw,
    ):
        demo = chat_ui(server.url, server.api_key, max_tokens=24)
        wrong_key = chat_ui(server.url, "not-the-key", max_tokens=8)
        try:
            url = launch_ui(demo, host="127.0.0.1", port=_free_port(), inline=False)
            bad_url = launch_ui(wrong_key, host="127.0.0.1", port=_free_port(), inline=False)
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

            # 👎 with a correction on the tuned column: the rating lands next to its request.
            correction = '{"intent": "greeting", "reply": "您好"}'
            page.locator("#correction-tuned textarea").fill(correction)
            page.locator("#down-tuned").click()
            page.wait_for_function(
                "() => document.querySelector('#feedback-tuned').innerText.includes('recorded')",
                timeout=10_000,
            )
            rated = log.frame().dropna(subset=["feedback_rating"])
            assert len(rated) == 1 and len(log) == 2, log.frame()
            assert rated.iloc[0]["feedback_rating"] == -1
            assert rated.iloc[0]["feedback_correction"] == correction
            assert rated.iloc[0]["model"] == "tuned" and rated.iloc[0]["prompt"] == prompt
            assert rated.iloc[0]["id"] in page.locator("#feedback-tuned").inner_text()
            assert page.locator("#correction-tuned textarea").input_value() == ""
            page.locator("#up-base").click()
            page.wait_for_function(
                "() => document.querySelector('#feedback-base').innerText.includes('recorded')",
                timeout=10_000,
            )
            ratings = log.frame().set_index("model")["feedback_rating"]
            assert ratings.to_dict() == {"base": 1, "tuned": -1}
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
