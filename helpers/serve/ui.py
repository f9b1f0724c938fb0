"""A browser chat where the base and the fine-tuned model answer the same prompt side by side.

The page (Gradio) talks to the course's OpenAI-compatible server (:mod:`helpers.serve.server`)
through the ``openai`` package and streams both answers at once, greedy (temperature 0) as the
course evaluates. Failed API calls (wrong key, busy server, unknown model) show up in the chat.

    >>> from helpers.serve.ui import chat_ui, launch_ui
    >>> demo = chat_ui(h.url, h.api_key)  # h = start_server({"base": ..., "tuned": ...})
    >>> url = launch_ui(demo)  # returns at once; demo.close() stops the page

Under each column, 👍 / 👎 and a correction box rate that column's latest answer: they post
``POST /v1/feedback`` with the answer's response id (the id the server logged), so a server
started with ``log=RequestLog(...)`` (notebook 07) keeps the rating next to the request.

On AutoDL, ``launch_ui(demo)`` listens on 0.0.0.0:6006, the port the console's 自定义服务
(custom service) forwards to your browser, behind a login it generates and prints (pass
``auth=(user, password)`` to choose one); keep the API server on another port then. Elsewhere
it listens on 127.0.0.1 only. No ``share=True`` tunnel: the page works offline, stays private.
"""

import os
import queue
import secrets
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gradio as gr
    import openai

ERROR_PREFIX = "⚠️ "  # an assistant message starting with this is a failed call, not an answer
EMPTY_ANSWER = "*（没有可见的输出 / no visible text; finish_reason={}）*"
_NOT_ANSWERS = (ERROR_PREFIX, EMPTY_ANSWER[:3])  # left out of the history sent to the model
COLUMN_TITLES = ("基座模型 base", "微调模型 fine-tuned")
ELEM_IDS = ("chat-base", "chat-tuned")  # stable DOM ids of the two chat columns
# Feedback controls of column i: f"{kind}-{ELEM_IDS[i][5:]}", kind "up", "down",
# "correction" or "feedback" (the status line), e.g. "down-tuned".

_HINTS = {
    400: "The server refused the request (its message says why), e.g. max tokens above its "
    "limit or a conversation longer than the context: lower max tokens or Clear the chat.",
    401: "Wrong or missing API key: pass chat_ui(url, api_key=h.api_key) with the key the server "
    "was started with (start_server(..., api_key=...)).",
    403: "The server refused this key: use the key the server was started with (h.api_key).",
    404: "Not found: chat_ui(models=...) must name models the server serves (start_server's dict "
    "keys; GET <base_url>/models lists them), and base_url must end in /v1 (use h.url).",
    429: "The server is busy (too many requests at once, see its Limits): wait until the other "
    "answer has finished, then send again.",
    504: "The answer took longer than the server's time limit (Limits.timeout_s): lower max "
    "tokens, or wait until the other requests have finished.",
    500: "The server failed while answering: read the log of the cell that started it.",
    503: "The server is not ready (still loading, or shutting down): wait a moment and resend.",
}


def _disable_gradio_analytics() -> None:
    """No telemetry or version calls to the internet: classrooms may be offline."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _text(content: Any) -> str:
    """The text of a chat message's content: a string, or Gradio 6's list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    if isinstance(content, list | tuple):
        return "".join(_text(part) for part in content)
    return ""


def _api_messages(history: Sequence[dict], system: str | None) -> list[dict[str, str]]:
    """A chat column's history as OpenAI messages; failed turns (and their question) left out."""
    messages = [{"role": "system", "content": system}] if system else []
    for message in history:
        role, text = message.get("role"), _text(message.get("content"))
        if role == "assistant" and text.startswith(_NOT_ANSWERS):
            if messages and messages[-1]["role"] == "user":
                messages.pop()
            continue
        if role in ("user", "assistant"):
            messages.append({"role": role, "content": text})
    return messages


def _error_text(model: str, exc: Exception, base_url: str) -> str:
    """A failed API call as a chat message the learner can act on."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        detail = (body.get("message") or body.get("detail")) if isinstance(body, dict) else body
        detail = str(detail or exc.message)[:300]
        hint = _HINTS.get(exc.status_code, "")
        return f"{ERROR_PREFIX}**{model}**: HTTP {exc.status_code}: {detail}\n\n{hint}".rstrip()
    if isinstance(exc, openai.APITimeoutError):
        return (
            f"{ERROR_PREFIX}**{model}**: no answer from {base_url} in time. The server may be "
            "overloaded or generating very long answers: lower max tokens and resend."
        )
    if isinstance(exc, openai.APIConnectionError):
        return (
            f"{ERROR_PREFIX}**{model}**: cannot reach {base_url}. Is the server still running? "
            "Start it again (start_server) and pass its h.url to chat_ui."
        )
    if isinstance(exc, openai.APIError):  # e.g. an error event in the middle of a stream
        return f"{ERROR_PREFIX}**{model}**: the server reported an error: {exc.message}"
    return f"{ERROR_PREFIX}**{model}**: {type(exc).__name__}: {exc}"


def _stream_answer(
    client: "openai.OpenAI",
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    stop: threading.Event,
) -> Iterator[tuple[str, str | None, str]]:
    """(text piece, finish_reason, response id) of one streamed, greedy chat completion."""
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True
    )
    with stream:
        for chunk in stream:
            if stop.is_set():
                return
            if chunk.choices:
                choice = chunk.choices[0]
                yield choice.delta.content or "", choice.finish_reason, chunk.id


def chat_ui(
    base_url: str,
    api_key: str | None,
    models: tuple[str, str] = ("base", "tuned"),
    *,
    max_tokens: int = 256,
    system: str | None = None,
) -> "gr.Blocks":
    """A Gradio page where ``models[0]`` (base) and ``models[1]`` (tuned) answer side by side."""
    _disable_gradio_analytics()
    import gradio as gr
    import openai

    from helpers.serve.server import Limits

    if len(models) != 2 or not all(isinstance(m, str) and m for m in models):
        raise ValueError(f"models must be two model names, (base, tuned); got {models!r}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    # No retries: a 429 or a dead server should show up at once, not after backoff.
    client = openai.OpenAI(
        base_url=base_url,
        api_key=api_key or "no-key",  # the openai package insists on one; keyless servers ignore it
        max_retries=0,
        timeout=openai.Timeout(300.0, connect=10.0),
    )

    # Per browser session: a question waiting for its answers, and the answer being streamed.
    # Each holds the Event that Clear sets to stop (or never start) that answer.
    waiting: dict[str, threading.Event] = {}
    answering: dict[str, threading.Event] = {}
    answer_ids: dict[str, list[str | None]] = {}  # the response id of each column's last answer

    def ask(message: str, history_a: list, history_b: list, request: gr.Request) -> tuple:
        """Puts the question into both columns at once and locks the textbox until answered."""
        message = (message or "").strip()
        if not message:
            return gr.skip()
        waiting[request.session_hash] = threading.Event()
        answer_ids[request.session_hash] = [None, None]
        question = {"role": "user", "content": message}
        locked = gr.Textbox(value="", interactive=False)
        return [*(history_a or []), question], [*(history_b or []), dict(question)], locked

    def respond(
        history_a: list, history_b: list, limit: float, request: gr.Request
    ) -> Iterator[tuple]:
        """Streams both models' answers to the question that ``ask`` added to the columns."""
        stop = waiting.pop(request.session_hash, None)
        histories = (history_a or [], history_b or [])
        if (
            stop is None
            or stop.is_set()
            or not all(h and h[-1]["role"] == "user" for h in histories)
        ):
            yield gr.skip()  # no new question, or Clear came first
            return
        answering[request.session_hash] = stop
        ids = answer_ids.setdefault(request.session_hash, [None, None])
        question = {"role": "user", "content": _text(histories[0][-1]["content"])}
        requests = [[*_api_messages(h[:-1], system), question] for h in histories]
        shown = [[*h, {"role": "assistant", "content": ""}] for h in histories]
        events: queue.Queue = queue.Queue()

        def work(i: int) -> None:
            """Puts column ``i``'s pieces, then its end (an error text or a finish reason)."""
            finish = None
            try:
                for piece, reason, response_id in _stream_answer(
                    client, models[i], requests[i], int(limit), stop
                ):
                    ids[i] = response_id
                    finish = reason or finish
                    if piece:
                        events.put((i, "piece", piece))
                events.put((i, "done", finish))
            except Exception as exc:  # every failure belongs in the chat, not in a server log
                events.put((i, "error", _error_text(models[i], exc, base_url)))

        for i in range(2):
            threading.Thread(target=work, args=(i,), daemon=True).start()
        yield shown
        try:
            running = 2
            while running:
                try:
                    batch = [events.get(timeout=0.1)]
                except queue.Empty:
                    batch = []
                if stop.is_set():  # Clear was pressed: the cleared columns are the last word
                    yield [], []
                    return
                while not events.empty():
                    batch.append(events.get_nowait())
                for i, kind, value in batch:
                    answer = shown[i][-1]
                    if kind == "piece":
                        answer["content"] += value
                    elif kind == "error":
                        answer["content"] = value
                        running -= 1
                    else:
                        if not answer["content"].strip():
                            answer["content"] = EMPTY_ANSWER.format(value)
                        running -= 1
                if batch:
                    yield shown
        finally:  # done, or the page went away: the workers close their streams
            stop.set()
            if answering.get(request.session_hash) is stop:
                del answering[request.session_hash]

    def clear_chat(request: gr.Request) -> tuple:
        """Empties both columns and stops this page's waiting or running answer."""
        for pending in (waiting, answering):
            stop = pending.pop(request.session_hash, None)
            if stop is not None:
                stop.set()
        answer_ids.pop(request.session_hash, None)
        return [], [], ""

    def rate(i: int, rating: str, correction: str, request: gr.Request) -> tuple:
        """Posts column ``i``'s rating of its latest answer; a status line and an empty box."""
        response_id = answer_ids.get(request.session_hash, [None, None])[i]
        if response_id is None:
            return f"{ERROR_PREFIX}No answer to rate yet: send a prompt first.", correction
        body = {"request_id": response_id, "rating": rating}
        if rating == "down" and (correction or "").strip():
            body["correction"] = correction.strip()
        try:
            client.post("/feedback", body=body, cast_to=object)
        except openai.APIStatusError as exc:
            detail = exc.body.get("message") if isinstance(exc.body, dict) else exc.message
            return f"{ERROR_PREFIX}HTTP {exc.status_code}: {detail}", correction
        except openai.APIError as exc:
            return _error_text(models[i], exc, base_url), correction
        thumb = "👍" if rating == "up" else "👎"
        return f"✓ {thumb} recorded for `{response_id}`", ""

    def rater(i: int, rating: str):
        """``rate`` for one button (Gradio finds gr.Request by annotation, not through partial)."""

        def rate_answer(correction: str, request: gr.Request) -> tuple:
            return rate(i, rating, correction, request)

        return rate_answer

    with gr.Blocks(title="Base vs fine-tuned", analytics_enabled=False) as demo:
        gr.Markdown(
            "## 同一个问题，两个模型 · base vs fine-tuned\n"
            f"Server `{base_url}` · greedy (temperature 0)"
            + (f" · system prompt: *{system}*" if system else "")
        )
        chats = []
        with gr.Row():
            for title, model, elem_id in zip(COLUMN_TITLES, models, ELEM_IDS, strict=True):
                with gr.Column():
                    gr.Markdown(f"### {title}: `{model}`")
                    chats.append(
                        gr.Chatbot(
                            label=model,
                            show_label=False,
                            elem_id=elem_id,
                            height=420,
                            buttons=["copy", "copy_all"],
                            feedback_options=None,
                        )
                    )
                    column = elem_id.removeprefix("chat-")
                    with gr.Row():
                        up = gr.Button("👍", scale=0, min_width=60, elem_id=f"up-{column}")
                        down = gr.Button("👎", scale=0, min_width=60, elem_id=f"down-{column}")
                        correction = gr.Textbox(
                            placeholder="更正（可选，随 👎 发送）/ correction, sent with 👎",
                            show_label=False,
                            scale=4,
                            elem_id=f"correction-{column}",
                        )
                    status = gr.Markdown(elem_id=f"feedback-{column}")
                    for button, rating in ((up, "up"), (down, "down")):
                        button.click(
                            rater(len(chats) - 1, rating),
                            [correction],
                            [status, correction],
                            queue=False,
                        )
        with gr.Row():
            box = gr.Textbox(
                placeholder="输入问题，回车发送 / type a prompt, Enter sends",
                show_label=False,
                scale=6,
                elem_id="prompt",
            )
            send = gr.Button("发送 Send", variant="primary", scale=1, elem_id="send")
            clear = gr.Button("清空 Clear", scale=1, elem_id="clear")
        top = max(Limits().max_tokens, max_tokens)  # the server refuses more than its limit
        limit = gr.Slider(1, top, value=max_tokens, step=1, label="max tokens", elem_id="limit")
        for trigger in (send.click, box.submit):
            trigger(ask, [box, *chats], [*chats, box], queue=False).then(
                respond, [*chats, limit], chats, show_progress="minimal", concurrency_id="chat"
            ).then(lambda: gr.Textbox(interactive=True), None, box, queue=False)
        for trigger in (clear.click, *(chat.clear for chat in chats)):
            trigger(clear_chat, None, [*chats, box], queue=False)
    return demo


def launch_ui(
    demo: "gr.Blocks",
    *,
    host: str | None = None,
    port: int | None = None,
    auth: tuple[str, str] | None = None,
    inline: bool | None = None,
) -> str:
    """Starts ``demo`` in the background (no public share link) and returns its URL.

    ``host`` defaults to 127.0.0.1, and on AutoDL to 0.0.0.0 (its proxy connects from outside
    the container) with a generated login unless ``auth`` is given.
    """
    from helpers.env import detect_platform
    from helpers.serve.server import default_port, is_loopback

    _disable_gradio_analytics()
    autodl = detect_platform() == "autodl"
    generated = False
    if host is None:
        host = "0.0.0.0" if autodl else "127.0.0.1"
        if autodl and auth is None:  # reachable through the proxy: never without a login
            auth, generated = ("learner", secrets.token_urlsafe(12)), True
    if auth is not None and (
        len(auth) != 2 or not all(isinstance(part, str) and part for part in auth)
    ):
        raise ValueError("auth must be a (username, password) pair of non-empty strings")
    if auth is None and not is_loopback(host):
        raise ValueError(
            f"launch_ui(host={host!r}) would let anyone who can reach this machine chat with "
            "your models through the page, which uses the server's API key for them. Pass a "
            "login, e.g. "
            f"launch_ui(demo, host={host!r}, auth=('learner', '<a password>')), or keep the "
            "default host (127.0.0.1, this machine only; on AutoDL a login is generated)."
        )
    if port is None and autodl:
        port = default_port()  # AutoDL's custom service forwards only this port
    if inline is None and autodl:
        inline = False  # an inline frame would point your browser at the container's localhost
    try:
        _, url, _ = demo.launch(
            server_name=host,
            server_port=port,
            auth=auth,
            inline=inline,
            share=False,  # no tunnel to a public relay: offline classrooms, private models
            prevent_thread_lock=True,
            quiet=True,
        )
    except OSError as exc:
        taken = f"Port {port} is taken" if port else "No free port from 7860 on"
        raise OSError(
            f"{taken}. Stop what runs there (an earlier UI: demo.close(); the API "
            "server: h.stop()) or pass another port. On AutoDL only port 6006 is forwarded: "
            "run the API server on another port (start_server(..., port=8000)) and the UI on 6006."
        ) from exc
    note = "demo.close() stops it"
    if autodl and is_loopback(host):
        note += "; loopback only, so AutoDL's 自定义服务 cannot reach it (leave host unset)"
    elif autodl:
        note += f"; from your browser: AutoDL console -> 自定义服务 (port {port})"
    print(f"Chat UI running on {url} ({note})")
    if generated:
        print(
            f"Login (generated for this session): user {auth[0]!r}, password {auth[1]!r}. "
            "Anyone with the 自定义服务 link needs it; pass auth=(user, password) to choose "
            "your own."
        )
    return url
