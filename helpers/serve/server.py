"""An OpenAI-compatible chat server for notebook 06: GGUF files on CPU (vLLM on GPUs: ``vllm``).

``start_server`` serves GGUF files through llama-cpp-python from a background thread, so the
notebook keeps working while clients (the ``openai`` package, curl, the chat UI) talk to it:

    >>> from helpers.serve import start_server
    >>> with start_server({"tuned": "outputs/tuned-q4_k_m.gguf"}, port=0) as server:
    ...     print(server.url)  # openai.OpenAI(base_url=server.url, api_key=...)

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream: true`` sends server-sent
events) and ``GET /health`` (no key); for notebook 07, ``POST /v1/feedback`` and ``GET /metrics``.
What it teaches about serving safely:

- It binds 127.0.0.1 unless told otherwise and refuses any other address without an API key.
- Every error is JSON in OpenAI's shape ``{"error": {"message", "type", "code"}}``; a client's
  mistake is a 4xx, never a 500, and a backend failure is a 500 without a traceback.
- :class:`Limits` caps tokens, body size, time, and how many requests run or wait per model.
  At the deadline a non-streaming request gets 504; a stream that has begun ends with
  ``finish_reason: "length"``, keeping the text sent so far.
- Chat templates come from the GGUF file and render in jinja2's sandbox (the fix for
  CVE-2024-34359, template injection through a model file).
- The GPU route's ``vllm serve`` line is built by :mod:`helpers.serve.vllm`.

Monitoring (notebook 07) is opt-in: ``log=RequestLog(path)`` writes one row per chat request,
``metrics=ServerMetrics()`` serves Prometheus metrics, ``registry=AdapterRegistry(path)`` with
``load_version`` serves adapter versions behind aliases (canary, promote, rollback). Without them
a request pays for none of it (:mod:`helpers.monitor.recorder` does the work off the loop).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from helpers.serve.backend import Backend, ChatResult, LlamaCppBackend, RequestError

if TYPE_CHECKING:
    from helpers.jobs import JobService
    from helpers.monitor.log import RequestLog
    from helpers.monitor.metrics import ServerMetrics
    from helpers.monitor.recorder import Exchange, Recorder
    from helpers.monitor.registry import AdapterRegistry, LoadedVersions

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
AUTODL_PORT = 6006  # the port AutoDL's "custom service" (自定义服务) forwards to a public URL
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class Limits:
    """Per-request caps and per-model admission: what keeps one small server usable."""

    max_tokens: int = 512  # a request asking for more gets 400
    max_body_bytes: int = 64_000  # a larger body gets 413 before it is parsed
    timeout_s: float = 60.0  # queueing + generation; 504, or a stream ends with "length"
    max_concurrent: int = 1  # generations running at once per model
    max_queue: int = 16  # requests waiting beyond that get 429 with Retry-After

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_body_bytes", "timeout_s", "max_concurrent"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)}.")
        if self.max_queue < 0:
            raise ValueError(f"Limits.max_queue must be 0 or more, got {self.max_queue}.")


def default_port() -> int:
    """6006 on AutoDL (the port its custom service forwards), 8000 elsewhere."""
    from helpers.env import detect_platform

    return AUTODL_PORT if detect_platform() == "autodl" else DEFAULT_PORT


# --- requests, errors ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class _TextPart(_Strict):
    type: Literal["text"]
    text: str


class _Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[_TextPart]

    def as_dict(self) -> dict[str, str]:
        content = self.content
        text = content if isinstance(content, str) else "".join(p.text for p in content)
        return {"role": self.role, "content": text}


class _StreamOptions(_Strict):
    include_usage: bool = False


_Key = Annotated[str, StringConstraints(max_length=64)]
_Value = Annotated[str, StringConstraints(max_length=512)]


class _ChatRequest(_Strict):
    model: str
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=1)
    stop: str | list[str] | None = Field(default=None)
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    # OpenAI's end-user id and request tags (at most 16 pairs, keys <= 64, values <= 512 chars):
    # the log's `client` and `metadata`; `metadata["replay_ts"]` stands in for the clock.
    user: str | None = Field(default=None, max_length=256)
    metadata: (
        dict[
            Annotated[str, StringConstraints(max_length=64)],
            Annotated[str, StringConstraints(max_length=512)],
        ]
        | None
    ) = Field(default=None, max_length=16)


class _FeedbackRequest(_Strict):
    request_id: str = Field(max_length=100)
    rating: str | int
    correction: str | None = None


class APIError(Exception):
    """An error the server answers with OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, type_: str, code: str, headers=None, param=None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.headers = headers or {}
        self.param = param  # the request field at fault, as OpenAI names it

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "code": self.code}
        return {"error": error if self.param is None else {**error, "param": self.param}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _bad_request(message: str, code: str = "invalid_request") -> APIError:
    return APIError(400, message, "invalid_request_error", code)


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"Request body is larger than this server's limit of {limit} bytes: "
        "send a shorter conversation (or start the server with a larger Limits.max_body_bytes).",
        "invalid_request_error",
        "request_too_large",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes: 413 by its Content-Length, or as it streams in.

    Public for other routes mounted on this server (notebook 08's jobs API): a body read any
    other way would skip the size limit that keeps one request from filling the memory.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _bad_request("The Content-Length header is not a number.")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked bodies declare no length: count them
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


_CHAT_EXAMPLE = '{"model": "tuned", "messages": [{"role": "user", "content": "你好"}]}'
_FEEDBACK_EXAMPLE = '{"request_id": "chatcmpl-...", "rating": "down", "correction": "..."}'


def _parse_body(cls: type[BaseModel], body: bytes, example: str) -> Any:
    try:
        return cls.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] == "json_invalid":
            raise _bad_request(
                f"The body is not valid JSON ({errors[0]['msg']}). Send an object such as "
                f"{example}."
            ) from None
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:3]]
        raise _bad_request("Invalid request: " + "; ".join(parts)) from None


# --- admission and generation ----------------------------------------------------------------


class _Slot:
    """One served model: a gate for running generations and a count of admitted requests."""

    def __init__(self, backend: Backend, limits: Limits):
        self.backend = backend
        self.max_concurrent = limits.max_concurrent
        self.capacity = limits.max_concurrent + limits.max_queue
        self.gate = threading.BoundedSemaphore(limits.max_concurrent)
        self.pending = 0  # running + waiting
        self.mean_s = 1.0  # moving average of generation time, for Retry-After
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.pending >= self.capacity:
                return False
            self.pending += 1
            return True

    def leave(self, seconds: float | None) -> None:
        with self._lock:
            self.pending -= 1
            if seconds is not None:
                self.mean_s = 0.8 * self.mean_s + 0.2 * seconds

    def retry_after(self) -> int:
        return max(1, math.ceil(self.mean_s * self.pending / self.max_concurrent))


class _Job:
    """One generation in its own thread; its events reach the event loop through a queue."""

    def __init__(self, slot: _Slot, messages: list[dict[str, str]], params: dict, deadline: float):
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()  # set when a streaming client goes away
        self.deadline = deadline
        args = (slot, messages, params)
        threading.Thread(target=self._run, args=args, daemon=True, name="serve-job").start()

    def _emit(self, kind: str, value: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop has closed: the server is stopping
            pass

    def _run(self, slot: _Slot, messages: list[dict[str, str]], params: dict) -> None:
        seconds = None
        try:
            if not slot.gate.acquire(timeout=max(0.0, self.deadline - time.monotonic())):
                self._emit("timeout")
                return
            started, result, count = time.monotonic(), None, 0
            try:
                stream = slot.backend.chat(messages, deadline=self.deadline, **params)
                try:
                    for item in stream:
                        if isinstance(item, ChatResult):
                            result = item
                            continue
                        if not isinstance(item, str):
                            raise TypeError(f"backend yielded {type(item).__name__}, not str")
                        self._emit("delta", item)
                        count += 1
                        if self.cancelled.is_set():
                            break
                        if time.monotonic() >= self.deadline:
                            result = ChatResult("timeout", 0, count)
                            break
                finally:
                    getattr(stream, "close", lambda: None)()
            finally:
                slot.gate.release()
                seconds = time.monotonic() - started
            self._emit("done", result or ChatResult("stop", 0, count))
        except RequestError as exc:
            self._emit("bad_request", exc)
        except Exception:
            logger.exception("The backend failed while generating")  # the traceback stays here
            self._emit("error")
        finally:
            slot.leave(seconds)

    async def next(self) -> tuple[str, Any]:
        return await self.events.get()


def _job_error(kind: str, value: Any, limits: Limits) -> APIError:
    if kind == "bad_request":
        return _bad_request(str(value), value.code)
    if kind in ("timeout", "done"):  # "done" here means finish_reason "timeout"
        return APIError(
            504,
            f"Generation did not finish within {limits.timeout_s:g} s (waiting included): ask "
            "for fewer max_tokens, retry later, or raise Limits.timeout_s.",
            "timeout",
            "timeout",
        )
    return APIError(500, "The model failed to generate an answer.", "server_error", "server_error")


def _sse(data: dict[str, Any] | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n"


def create_app(
    models: Mapping[str, Backend],
    api_key: str | None,
    limits: Limits = Limits(),
    *,
    log: RequestLog | None = None,
    metrics: ServerMetrics | None = None,
    registry: AdapterRegistry | None = None,
    load_version: Callable[[str, Path], Backend] | None = None,
    jobs: JobService | None = None,
) -> FastAPI:
    """The FastAPI app serving ``models`` (name -> backend); requests need ``api_key`` if set.

    ``log`` and ``metrics`` record every chat request; ``registry`` adds its aliases and
    versions as model names, each version loaded by ``load_version(version, adapter_dir)`` the
    first time it is needed. A name in ``models`` wins over the registry's. ``jobs`` (notebook
    08) adds OpenAI's files and fine-tuning routes; what they train lands in ``registry``.
    """
    if not models and registry is None:
        raise ValueError("Serve at least one model, e.g. create_app({'tuned': backend}, None).")
    if (registry is None) != (load_version is None):
        raise ValueError("registry= and load_version= go together: the server loads versions.")
    if jobs is not None and jobs.registry.path != getattr(registry, "path", None):
        raise ValueError("jobs= registers what it trains: pass registry=jobs.registry too.")
    slots = {name: _Slot(backend, limits) for name, backend in models.items()}
    recorder: Recorder | None = None
    if log is not None or metrics is not None:
        from helpers.monitor.recorder import Recorder

        recorder = Recorder(log, metrics, wait_s=limits.timeout_s + 10)
    if metrics is not None:
        for name, slot in slots.items():
            metrics.track_queue(name, lambda slot=slot: slot.pending)
    versions: LoadedVersions | None = None
    if registry is not None:
        from helpers.monitor.registry import LoadedVersions

        def version_slot(version: str, backend: Backend) -> _Slot:
            slot = _Slot(backend, limits)
            if metrics is not None:
                metrics.track_queue(version, lambda: slot.pending)
            return slot

        versions = LoadedVersions(registry, load_version, version_slot)
    created = int(time.time())
    app = FastAPI(title="LLM 微调实战 server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.resources = [r for r in (recorder, versions, jobs) if r is not None]  # stop()

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = (
            "Unknown route: this server has GET /v1/models, POST /v1/chat/completions, "
            "POST /v1/feedback, GET /metrics, GET /health."
        )
        if exc.status_code != 404:
            message = f"{request.method} is not supported on {request.url.path}."
        code = "not_found" if exc.status_code == 404 else "method_not_allowed"
        return APIError(exc.status_code, message, "invalid_request_error", code).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _bad_request(f"Invalid request: {exc.errors()[:3]}").response()

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        return _job_error("error", None, limits).response()

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), api_key.encode()
        ):
            raise APIError(
                401,
                "Missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                "(openai.OpenAI(api_key=...) does this).",
                "invalid_request_error",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )

    def not_enabled(what: str, keyword: str) -> APIError:
        return APIError(
            501,
            f"This server was started without {what}: pass start_server(..., {keyword}).",
            "invalid_request_error",
            f"{what.replace(' ', '_')}_not_enabled",
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models() -> dict[str, Any]:
        data = [
            {"id": n, "object": "model", "created": created, "owned_by": "course"} for n in slots
        ]
        if versions is not None:
            data += versions.models(created)
        return {"object": "list", "data": data}

    @app.get("/metrics", dependencies=[Depends(check_key)])
    async def prometheus_metrics() -> Response:
        from helpers.monitor.metrics import CONTENT_TYPE

        if metrics is None:
            raise not_enabled("metrics", "metrics=ServerMetrics()")
        await run_in_threadpool(recorder.flush, 5.0)  # requests already answered are counted
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/feedback", dependencies=[Depends(check_key)])
    async def feedback(request: Request) -> dict[str, Any]:
        from helpers.monitor.log import FeedbackError

        body = await read_body(request, limits.max_body_bytes)
        req = _parse_body(_FeedbackRequest, body, _FEEDBACK_EXAMPLE)
        if log is None:
            raise not_enabled("request log", "log=RequestLog(path)")
        try:  # SQLite (and waiting for a row still being written) off the event loop
            rating = await run_in_threadpool(
                recorder.feedback, req.request_id, req.rating, req.correction
            )
        except FeedbackError as exc:
            raise APIError(exc.status, str(exc), "invalid_request_error", exc.code) from None
        return {"object": "feedback", "request_id": req.request_id, "rating": rating}

    async def route(model: str, key: str) -> tuple[_Slot, str | None]:
        """The slot serving ``model`` and the registry version behind it (None: not versioned)."""
        if (slot := slots.get(model)) is not None:
            return slot, None
        version = versions.registry.lookup(model, key) if versions is not None else None
        if version is None:
            names = [*slots, *(e["id"] for e in versions.models(created))] if versions else slots
            raise APIError(
                404,
                f"The model {model!r} is not served here; served models: {', '.join(names)}.",
                "invalid_request_error",
                "model_not_found",
            )
        slot = versions.served.get(version) or await run_in_threadpool(versions.get, version)
        return slot, version

    if jobs is not None:
        jobs.mount(app, check_key)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        exchange = recorder.begin(request_id) if recorder is not None else None
        try:
            await check_key(request)
            response = await chat(request, request_id, exchange)
        except asyncio.CancelledError:
            if exchange is not None:
                recorder.finish(exchange, 499, "the client went away")
            raise
        except Exception as exc:
            if not isinstance(exc, APIError):
                logger.exception("The server failed on a chat request")
                exc = _job_error("error", None, limits)
            if exchange is not None:
                recorder.finish(exchange, exc.status, exc.message)
            exc.headers = {**exc.headers, "x-request-id": request_id}
            raise exc from None
        response.headers["x-request-id"] = request_id
        return response

    async def chat(request: Request, request_id: str, exchange: Exchange | None) -> Response:
        body = await read_body(request, limits.max_body_bytes)
        req: _ChatRequest = _parse_body(_ChatRequest, body, _CHAT_EXAMPLE)
        messages = [m.as_dict() for m in req.messages]
        if exchange is not None:
            exchange.model, exchange.client, exchange.messages = req.model, req.user, messages
            exchange.metadata = req.metadata or {}
        slot, version = await route(req.model, req.user or request_id)
        if exchange is not None:
            exchange.served, exchange.version = True, version
        max_tokens = req.max_completion_tokens or req.max_tokens or limits.max_tokens
        if max_tokens > limits.max_tokens:
            raise _bad_request(
                f"max_tokens={max_tokens} is above this server's limit of {limits.max_tokens}: "
                f"ask for at most {limits.max_tokens}.",
                "max_tokens_too_large",
            )
        if not slot.try_enter():
            raise APIError(
                429,
                f"Too many requests waiting for {req.model!r}: retry after a moment.",
                "rate_limit_error",
                "queue_full",
                {"Retry-After": str(slot.retry_after())},
            )
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        params = {
            "max_tokens": max_tokens,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "stop": stop,
        }
        job = _Job(slot, messages, params, time.monotonic() + limits.timeout_s)
        base = {"id": request_id, "created": int(time.time()), "model": req.model}

        if not req.stream:
            parts: list[str] = exchange.parts if exchange is not None else []
            kind, value = await job.next()
            while kind == "delta":
                if exchange is not None:
                    exchange.first_token()
                parts.append(value)
                kind, value = await job.next()
            if kind != "done" or value.finish_reason == "timeout":
                raise _job_error(kind, value, limits)
            usage = _usage(value, len(parts))
            message = {"role": "assistant", "content": "".join(parts)}
            choice = {"index": 0, "message": message, "finish_reason": value.finish_reason}
            answer = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            if exchange is not None:
                _record_result(exchange, value, usage)
                recorder.finish(exchange, 200)
            return JSONResponse(answer)

        kind, value = first = await job.next()  # errors before the first token get a status
        if kind not in ("delta", "done") or (kind == "done" and value.finish_reason == "timeout"):
            raise _job_error(kind, value, limits)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        chunk_base = {**base, "object": "chat.completion.chunk"}
        events = _stream(job, first, chunk_base, include_usage, limits, exchange, recorder)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        # If the stream never starts (the client left at once), the background task records it.
        background = None if exchange is None else BackgroundTask(_abandon, job, exchange, recorder)
        return StreamingResponse(
            events, media_type="text/event-stream", headers=headers, background=background
        )

    return app


def _usage(result: ChatResult, deltas: int) -> dict[str, int]:
    completion = result.completion_tokens or deltas
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": result.prompt_tokens + completion,
    }


def _record_result(exchange: Exchange, result: ChatResult, usage: dict[str, int]) -> None:
    exchange.prompt_tokens = usage["prompt_tokens"]
    exchange.completion_tokens = usage["completion_tokens"]
    exchange.confidence = result.mean_logprob


def _abandon(job: _Job, exchange: Exchange, recorder: Recorder) -> None:
    job.cancelled.set()
    recorder.finish(exchange, 499, "the client went away")  # no-op when the stream recorded it


async def _stream(
    job: _Job,
    first: tuple[str, Any],
    base: dict[str, Any],
    include_usage: bool,
    limits: Limits,
    exchange: Exchange | None = None,
    recorder: Recorder | None = None,
) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, content chunks, a finish chunk, [DONE]."""

    def chunk(delta: dict[str, str], finish: str | None = None) -> str:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    status, error = 499, "the client went away"  # unless the stream gets to its end
    try:
        yield chunk({"role": "assistant", "content": ""})
        kind, value = first
        count = 0
        while kind == "delta":
            if exchange is not None:
                exchange.first_token()
                exchange.parts.append(value)
            yield chunk({"content": value})
            count += 1
            kind, value = await job.next()
        if kind == "done":
            # At the deadline a stream that has begun ends like a max_tokens cut: "length".
            yield chunk({}, "length" if value.finish_reason == "timeout" else value.finish_reason)
            usage = _usage(value, count)
            if include_usage:
                yield _sse({**base, "choices": [], "usage": usage})
            if exchange is not None:
                _record_result(exchange, value, usage)
            outcome = (200, "timeout" if value.finish_reason == "timeout" else None)
        else:
            failure = _job_error(kind, value, limits)
            yield _sse(failure.body())
            outcome = (failure.status, failure.message)
        yield _sse("[DONE]")
        status, error = outcome
    finally:
        job.cancelled.set()  # a client that went away stops the generation at the next token
        if exchange is not None:
            recorder.finish(exchange, status, error)


# --- running it from a notebook ----------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name or an interface address other than loopback
        return False


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key is empty: pass a real key, e.g. secrets.token_urlsafe(24).")
    if not is_loopback(host) and api_key is None:
        raise ValueError(
            f"Refusing to listen on {host!r} without an API key (不设密钥就对外开放): anyone who "
            "can reach this address could use your model and your machine. Pass "
            "api_key=secrets.token_urlsafe(24) and give the key only to your clients, or keep "
            "host='127.0.0.1' (this machine only; reach it from elsewhere through an SSH tunnel)."
        )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on connections whose socket
    # says TCP (base_events._set_nodelay). Without it each response (headers, then body) waits
    # for the client's delayed ACK: every request took 44 ms on loopback instead of ~2.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if sys.platform != "win32":  # quick restarts; on Windows the option would share a busy port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"Cannot listen on {host}:{port} ({exc.strerror}). If an earlier server still runs, "
            "stop it with handle.stop(); or pass another port (port=0 picks a free one)."
        ) from exc
    return sock


class ServerHandle:
    """A server running in a background thread: ``.url``, ``.api_key``, ``.models``, ``.stop()``."""

    def __init__(
        self,
        server: Any,
        thread: threading.Thread,
        sock: socket.socket,
        host: str,
        api_key: str | None,
        models: list[str],
        owned: list[Any],
    ):
        self._server, self._thread, self._sock, self._owned = server, thread, sock, owned
        self.host = host
        self.port: int = sock.getsockname()[1]
        url_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        url_host = f"[{url_host}]" if ":" in url_host else url_host
        self.url = f"http://{url_host}:{self.port}/v1"
        self.api_key = api_key
        self.models = models

    @property
    def running(self) -> bool:
        """True while the server thread is alive."""
        return self._thread.is_alive()

    def _wait_ready(self, timeout_s: float) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if not self._thread.is_alive():
                raise RuntimeError("The server thread stopped while starting; see the log above.")
            try:
                url = f"{self.url}/models"
                answer = httpx.get(url, headers=headers, timeout=2, trust_env=False)
                if answer.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"The server at {self.url} did not answer within {timeout_s:g} s.")

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every request answered so far is in the log and the metrics.

        Rows are written by a background thread; call this before reading ``log.frame()``
        right after a request. False when the writer did not catch up within ``timeout_s``.
        """
        return all(r.flush(timeout_s) for r in self._owned if hasattr(r, "flush"))

    def stop(self) -> None:
        """Stop serving, free the models it loaded, write the log's last rows; twice is fine."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
        for backend in self._owned:
            backend.close()
        self._owned = []

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        key = "set" if self.api_key else "none"
        state = "running" if self.running else "stopped"
        return f"ServerHandle(url={self.url!r}, models={self.models}, api_key={key}, {state})"


def start_server(
    models: Mapping[str, str | Path | Backend],
    host: str = "127.0.0.1",
    port: int | None = None,
    api_key: str | None = None,
    limits: Limits = Limits(),
    *,
    log: RequestLog | None = None,
    metrics: ServerMetrics | None = None,
    registry: AdapterRegistry | None = None,
    load_version: Callable[[str, Path], Backend] | None = None,
    jobs: JobService | None = None,
) -> ServerHandle:
    """Serve ``models`` (name -> GGUF path or backend) in a background thread until .stop().

    ``log``, ``metrics``, ``registry``, ``load_version`` and ``jobs``: see :func:`create_app`;
    ``stop()`` closes ``jobs`` too (a running job pauses at a checkpoint and resumes later).
    """
    import uvicorn

    check_exposure(host, api_key)
    port = default_port() if port is None else port
    owned: list[LlamaCppBackend] = []
    backends: dict[str, Backend] = {}
    try:
        for name, model in models.items():
            if isinstance(model, (str, Path)):
                owned.append(LlamaCppBackend(model))
                backends[name] = owned[-1]
            else:
                backends[name] = model
        app = create_app(
            backends,
            api_key,
            limits,
            log=log,
            metrics=metrics,
            registry=registry,
            load_version=load_version,
            jobs=jobs,
        )
        sock = _bind(host, port)
    except BaseException:
        for backend in owned:
            backend.close()
        raise
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=3
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="serve-uvicorn"
    )
    thread.start()
    served = list(backends)  # aliases and versions of a registry are listed by /v1/models
    handle = ServerHandle(
        server, thread, sock, host, api_key, served, [*owned, *app.state.resources]
    )
    handle._wait_ready(timeout_s=30)
    return handle
