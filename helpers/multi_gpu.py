"""Past one GPU (notebook 11): launch the training script on N processes, compare the adapters,
read the accelerate configs the way ``accelerate launch`` does, and price a step's traffic.

The engines are PyTorch's and DeepSpeed's, driven through accelerate and the Trainer; nothing
here trains. :func:`torchrun` starts :mod:`helpers.train_cli` on N CPU processes (gloo), which
is how CI proves that DDP over 2 ranks equals gradient accumulation over 2 micro-batches.

    >>> from helpers import multi_gpu
    >>> run = multi_gpu.torchrun(2, ["--output-dir", "/tmp/ddp", "--max-steps", "3"])
    >>> multi_gpu.adapter_max_diff("/tmp/one/adapter", "/tmp/ddp/adapter")
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from helpers.vram import GB, ModelShape, TrainingPlan, estimate_vram

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs" / "accelerate"
# Effective all-reduce bus bandwidth between two consumer cards WITHOUT NVLink or P2P (traffic
# through the CPU's PCIe root, PCIe 4.0 x16 ~ 32 GB/s raw): an assumption, not a measurement.
PCIE_BUS_GB_S = 12.0
NVLINK_BUS_GB_S = 150.0  # A100/H100 SXM class, for contrast (also an assumption)


@dataclass
class Launch:
    """One launcher run: its exit code, wall seconds, output tail and the rank-0 summary."""

    returncode: int
    seconds: float
    output: str
    summary: dict | None

    def error_line(self) -> str:
        """The first line naming an error (what a reader needs first), or ''."""
        for line in self.output.splitlines():
            if "Error:" in line and "ChildFailedError" not in line:
                return line.strip()
        return ""


def torchrun(nproc: int, args: list[str], timeout: int = 300, env: dict | None = None) -> Launch:
    """``torchrun --nproc-per-node nproc -m helpers.train_cli *args`` (1 process: plain python)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    command = (launcher if nproc > 1 else [sys.executable]) + ["-m", "helpers.train_cli", *args]
    # one thread per process: 2 processes on 2 cores do not fight over them
    environ = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env or {}),
    }
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=environ, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - start
    out_dir = Path(args[args.index("--output-dir") + 1])
    summary_file = out_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if done.returncode == 0 else None
    return Launch(done.returncode, seconds, (done.stdout + done.stderr)[-20000:], summary)


def adapter_max_diff(a: str | Path, b: str | Path) -> float:
    """Largest absolute difference between two saved LoRA adapters (same tensor names)."""
    from safetensors.torch import load_file

    left = load_file(Path(a) / "adapter_model.safetensors")
    right = load_file(Path(b) / "adapter_model.safetensors")
    if left.keys() != right.keys():
        raise ValueError(f"The adapters hold different tensors: {set(left) ^ set(right)}")
    return max((left[k] - right[k]).abs().max().item() for k in left)


# ---------------------------------------------------------------------------- configs


def launch_env(config_file: str | Path) -> tuple[Any, dict[str, str]]:
    """(the launch arguments, the environment) ``accelerate launch --config_file`` would set.

    Uses accelerate's own parser and validation, so an unknown key or value fails here as it
    would on the GPU box. The environment is what the Trainer's plugins read in each process.
    """
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(config_file), "-m", "helpers.train_cli"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before the DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


def deepspeed_config(config_file: str | Path, training_args, hidden_size: int) -> dict:
    """The DeepSpeed config the Trainer would hand DeepSpeed: accelerate's plugin, "auto" filled.

    transformers fills the "auto" fields from ``training_args`` and fails on a value that
    disagrees with them (e.g. a different gradient accumulation).
    """
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    _, env = launch_env(config_file)
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    hf = HfTrainerDeepSpeedConfig(plugin.deepspeed_config)
    hf.trainer_config_process(training_args)
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=hidden_size))
    hf.trainer_config_finalize(
        training_args, model, num_training_steps=max(1, training_args.max_steps)
    )
    return hf.config


def parse_with_deepspeed(config: dict):  # -> deepspeed.runtime.config.DeepSpeedConfig
    """DeepSpeed's own parser (pydantic): unknown keys and bad values raise."""
    from deepspeed.runtime.config import DeepSpeedConfig

    return DeepSpeedConfig(config)


def fsdp_plugin(config_file: str | Path):  # -> accelerate.utils.FullyShardedDataParallelPlugin
    """The FSDP plugin each process would build from the config's environment."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    _, env = launch_env(config_file)
    with mock.patch.dict(os.environ, env):
        return FullyShardedDataParallelPlugin()


# ---------------------------------------------------------------------------- traffic


def step_traffic(
    shape: ModelShape,
    plan: TrainingPlan,
    strategy: str,
    n_devices: int,
    grad_accum: int = 1,
    bus_gb_s: float = PCIE_BUS_GB_S,
) -> dict[str, float]:
    """Bytes each GPU sends per optimizer step, and the seconds that takes at ``bus_gb_s``.

    Ring collectives: an all-reduce of B bytes moves 2(n-1)/n·B per device, an all-gather or a
    reduce-scatter (n-1)/n·B. ddp: the fp32 gradients of the trainable weights are all-reduced
    once per optimizer step (no_sync on the other micro-steps). zero2: reduce-scatter of those
    gradients + all-gather of the updated trainable weights. zero3/fsdp: every micro-step
    gathers the (frozen) weights twice, forward and backward, and reduce-scatters gradients.
    """
    est = estimate_vram(shape, plan)
    n = n_devices
    ring = (n - 1) / n if n > 1 else 0.0
    grads = est.gradients  # fp32, trainable parameters only
    if strategy == "ddp":
        sent = 2 * ring * grads
    elif strategy in ("zero1", "zero2"):
        sent = ring * grads + ring * est.adapter_weights
    elif strategy in ("zero3", "fsdp"):
        sent = grad_accum * (2 * ring * (est.weights + est.adapter_weights) + ring * grads)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return {"GB_per_gpu": sent / GB, "seconds": sent / (bus_gb_s * 1e9)}


def compute_seconds(
    shape: ModelShape, plan: TrainingPlan, grad_accum: int, peak_flops: float, mfu: float = 0.35
) -> float:
    """Seconds of compute per optimizer step and GPU, at an assumed MFU (see helpers.sft)."""
    from helpers.sft import flops_per_token

    trainable = estimate_vram(shape, plan).trainable_params
    tokens = plan.batch_size * plan.seq_len * grad_accum
    return (
        tokens
        * flops_per_token(shape, trainable, plan.seq_len, plan.label_share)
        / (peak_flops * mfu)
    )
