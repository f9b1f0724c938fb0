"""Serving the tuned model (notebook 06): an OpenAI-compatible server, a chat UI, Ollama.

    >>> from helpers.serve import start_server
    >>> server = start_server({"tuned": "outputs/tuned-q4_k_m.gguf"})  # 127.0.0.1, no key needed
    >>> server.url  # openai.OpenAI(base_url=server.url, api_key="unused") talks to it
    'http://127.0.0.1:8000/v1'
    >>> server.stop()

``server`` serves GGUF files (``backend``: llama-cpp-python, sandboxed chat templates) on
CPU and builds the ``vllm serve`` command for GPUs (``vllm_command``); ``loadtest`` measures
latency under concurrent load (and posts feedback in parallel: ``feedback=0.5``).
Notebook 07 monitors the same server: ``start_server(..., log=RequestLog(path),
metrics=ServerMetrics(), registry=AdapterRegistry(path), load_version=...)`` (``helpers.monitor``).
``ui``: ``chat_ui``, ``launch_ui`` (base vs tuned side by side); ``ollama``: ``write_modelfile``.
"""

from .backend import Backend, ChatResult, LlamaCppBackend, RequestError, sandboxed_formatter
from .loadtest import load_test
from .ollama import modelfile, template_kind, write_modelfile
from .server import (
    Limits,
    ServerHandle,
    create_app,
    default_port,
    is_loopback,
    start_server,
)
from .ui import chat_ui, launch_ui
from .vllm import vllm_command

__all__ = [
    "Backend",
    "ChatResult",
    "LlamaCppBackend",
    "Limits",
    "RequestError",
    "ServerHandle",
    "create_app",
    "default_port",
    "is_loopback",
    "load_test",
    "sandboxed_formatter",
    "start_server",
    "vllm_command",
    "chat_ui",
    "launch_ui",
    "modelfile",
    "template_kind",
    "write_modelfile",
]
