"""The GPU route of notebook 06: the ``vllm serve`` command for the base model and the adapter.

:func:`vllm_command` builds the line: the precision the GPU has, greedy meaning greedy (vLLM's
neutral generation config, not the model's), ``--max-lora-rank`` large enough for the adapter,
and an API key kept in a private file instead of the printed line. The same exposure rule as
the CPU server applies: any address beyond loopback needs a key.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from helpers.serve.server import check_exposure, default_port

_LORA_RANKS = (8, 16, 32, 64, 128, 256)  # values vLLM accepts for --max-lora-rank


def _adapter_rank(adapter_dir: Path) -> int | None:
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks) or None


# vLLM's --dtype choices (vllm/config/model.py, ModelDType).
VLLM_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
# In the home folder, not outputs/: that may be synced (Google Drive on Colab), a key must not.
VLLM_KEY_FILE = "~/.cache/llm-course/vllm-api-key"


@dataclass(frozen=True)
class VllmCommand:
    """A ``vllm serve`` command: ``argv`` and ``env()`` for subprocess, ``str()`` for a terminal.

    The API key is never in ``argv``: ``ps`` shows every process's arguments to every user of
    the machine. vLLM reads the key from VLLM_API_KEY, and the terminal line reads that from
    ``key_file`` (readable by you only), so printing the command shows no secret.
    """

    argv: list[str]
    key_file: Path | None = None
    api_key: str | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """The environment variables the command needs, e.g. ``{**os.environ, **cmd.env()}``."""
        return {"VLLM_API_KEY": self.api_key} if self.api_key else {}

    def __str__(self) -> str:
        line = shlex.join(self.argv)
        if self.key_file is None:
            return line
        return f'VLLM_API_KEY="$(cat {shlex.quote(str(self.key_file))})" {line}'


def _vllm_dtype(dtype: str | None) -> str | None:
    """``dtype`` checked, or the GPU's: bfloat16 where native (sm_80 and newer), else half."""
    if dtype is not None:
        if dtype not in VLLM_DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of vLLM's --dtype values {VLLM_DTYPES}.")
        return dtype
    from helpers.env import gpu_info

    gpu = gpu_info()  # asks the hardware; torch.cuda.is_bf16_supported() counts slow emulation
    if gpu is None:
        return None  # no GPU here: vLLM picks ("auto") on the machine that runs it
    return "bfloat16" if gpu.bf16 else "half"  # a T4 (sm_75) trains and serves in fp16


def _write_private(path: Path, text: str) -> Path:
    """Writes ``text`` to ``path`` readable by this user only (mode 0600); the absolute path."""
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        if hasattr(os, "fchmod"):  # an existing file keeps its old mode otherwise
            os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
    return path


def vllm_command(
    base_model: str,
    adapter_dir: str | Path,
    *,
    served_name: str = "tuned",
    host: str = "127.0.0.1",
    port: int | None = None,
    api_key: str | None = None,
    key_file: str | Path | None = None,
    dtype: str | None = None,
    max_model_len: int = 2048,
    gpu_memory_utilization: float = 0.85,
    max_num_seqs: int = 32,
) -> VllmCommand:
    """``vllm serve``: the base model as "base", the LoRA adapter as ``served_name``.

    ``print(cmd)`` shows a line to paste into a terminal. With ``api_key``, the key is written
    to ``key_file`` (default ``~/.cache/llm-course/vllm-api-key``, mode 0600) and the line reads
    it from there. ``dtype`` defaults to this machine's GPU: ``half`` without native bf16 (a T4),
    ``bfloat16`` with it. vLLM's key guards only its /v1 routes (its security docs): keep the
    default host and reach the server through an SSH tunnel rather than exposing it.
    """
    check_exposure(host, api_key)
    if served_name == "base":
        raise ValueError(
            'served_name "base" is the base model\'s name; pick another, e.g. "tuned".'
        )
    adapter = Path(adapter_dir).expanduser().resolve()
    port = default_port() if port is None else port
    # Flags as in vLLM's docs for v0.29 and its current source (vllm/config/model.py,
    # vllm/entrypoints/openai/cli_args.py); `--generation-config vllm` needs vLLM 0.8 or newer.
    # Since 0.8 vLLM applies the model's generation_config.json by default (Qwen2.5: a
    # repetition penalty, temperature, top_p, top_k), and a request's temperature=0 does not
    # undo the penalty; "vllm" keeps vLLM's neutral defaults, so greedy matches the evaluation.
    cmd = ["vllm", "serve", str(base_model), "--served-model-name", "base"]
    cmd += ["--enable-lora", "--lora-modules", f"{served_name}={adapter}"]
    rank = _adapter_rank(adapter)
    if rank is not None:  # vLLM refuses adapters above --max-lora-rank (default 16)
        cmd += ["--max-lora-rank", str(next((r for r in _LORA_RANKS if r >= rank), rank))]
    resolved_dtype = _vllm_dtype(dtype)
    if resolved_dtype is not None:
        cmd += ["--dtype", resolved_dtype]
    cmd += ["--generation-config", "vllm"]
    cmd += ["--host", host, "--port", str(port), "--max-model-len", str(max_model_len)]
    cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    cmd += ["--max-num-seqs", str(max_num_seqs)]
    if api_key is None:
        return VllmCommand(cmd)
    return VllmCommand(cmd, _write_private(Path(key_file or VLLM_KEY_FILE), api_key), api_key)
