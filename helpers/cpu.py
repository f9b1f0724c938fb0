"""The CPU under the course, and the two libraries whose CPU code depends on it.

Learners' machines, Colab hosts, AutoDL's Xeons and CI runners are not all the same x86-64 CPU:
some have AVX2 only, others AVX-512 (with BF16) and AMX. Two libraries behave differently by CPU:

- llama.cpp (05/06) compiles for the CPU that builds it unless told otherwise; the course
  builds it for AVX2 (:mod:`helpers.quantize.install`) and checks the build before using it.
- bitsandbytes 0.50 runs 4-bit inference on CPUs with AVX-512-BF16 through a packed kernel that
  only takes layers whose input size is a multiple of the 4-bit block size (64) and whose output
  size is a multiple of 32; any other layer fails with ``RuntimeError: shape '[128, 5]' is
  invalid``. :func:`guard_bnb_cpu` sends such layers down bitsandbytes' generic path instead.

    >>> from helpers import cpu
    >>> print("\\n".join(cpu.report()))  # CPU model, SIMD flags, llama.cpp build, bnb path
"""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The instruction-set flags (as /proc/cpuinfo names them) that decide which kernels can run.
SIMD_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
# bitsandbytes' packed AVX-512-BF16 kernel: input size in 4-bit blocks, output in 32-row tiles
BNB_PACKED_BLOCK_N = 32


def _cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def cpu_model() -> str:
    """The CPU's marketing name (e.g. 'Intel(R) Xeon(R) Platinum 8481C'), or the platform's."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    """CPUs this process may run on (a container's CPU set), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def cpu_flags() -> set[str]:
    """Every feature flag the CPU reports (Linux), e.g. {'avx2', 'avx512f', 'amx_tile', ...}."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def bnb_packed_cpu_path() -> bool:
    """Whether bitsandbytes runs 4-bit CPU inference through its packed AVX-512-BF16 kernel."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:
        return False
    return bool(has_avx512bf16())


def bnb_packed_incompatible(model) -> list[str]:
    """Names of the 4-bit layers that bitsandbytes' packed CPU kernel cannot take."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return []
    bad = []
    for name, module in model.named_modules():
        if isinstance(module, Linear4bit):
            state = module.weight.quant_state
            block = state.blocksize if state is not None else 64
            if module.in_features % block or module.out_features % BNB_PACKED_BLOCK_N:
                bad.append(name)
    return bad


def guard_bnb_cpu(model) -> list[str]:
    """Keep a 4-bit model on CPU working whatever the CPU: returns the layers it rerouted.

    On CPUs with AVX-512-BF16, bitsandbytes 0.50 repacks each 4-bit layer for its fast kernel at
    the first forward pass in eval mode, and the repacking fails for layers whose sizes are not
    multiples of 64 (input) and 32 (output). Real models (Gemma, Qwen) have no such layers; a
    model of your own might. Those layers are switched to bitsandbytes' generic path
    (dequantize, then matmul), the rest keep the fast kernel; elsewhere this does nothing.
    In your own code the same workaround is ``layer.support_avx512bf16_for_cpu = False``.
    """
    if not bnb_packed_cpu_path():
        return []
    bad = bnb_packed_incompatible(model)
    modules = dict(model.named_modules())
    for name in bad:
        modules[name].support_avx512bf16_for_cpu = False
    if bad:
        warnings.warn(
            f"bitsandbytes' AVX-512-BF16 kernel on this CPU needs 4-bit layers whose input size "
            f"is a multiple of 64 and output size a multiple of {BNB_PACKED_BLOCK_N}; "
            f"{len(bad)} layer(s) are not ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
            " and now use bitsandbytes' generic CPU path (slower, same results). In your own code:"
            " layer.support_avx512bf16_for_cpu = False.",
            stacklevel=2,
        )
    return bad


def _linear4bit_layers(*models) -> list:
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return []
    return [m for model in models for m in model.modules() if isinstance(m, Linear4bit)]


def train_on_generic_bnb_path(model) -> int:
    """Keep a 4-bit model that is being trained off the packed kernel; returns the layer count.

    bitsandbytes 0.50 repacks a layer for its AVX-512-BF16 kernel at the first eval forward (the
    eval loss during training) and unpacks it when a checkpoint is saved; the unpacking
    re-quantizes the block scales (absmax) approximately, so the frozen base drifts under the
    adapter and no longer equals the base it is reloaded on. The generic path never repacks.
    """
    layers = _linear4bit_layers(model)
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


@contextmanager
def bnb_generic_path(*models) -> Iterator[None]:
    """Run 4-bit layers through bitsandbytes' generic path (fp32) inside the block, then restore.

    Which 4-bit kernel a CPU forward takes depends on the CPU (AVX-512-BF16: packed, in bf16)
    and on the inputs (a training hook that makes them require grad: generic, in fp32). Two
    models compared at float32 tolerance must take the same one. A layer already repacked by
    an earlier eval forward keeps its packed kernel.
    """
    layers = _linear4bit_layers(*models)
    saved = [layer.support_avx512bf16_for_cpu for layer in layers]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    try:
        yield
    finally:
        for layer, value in zip(layers, saved, strict=True):
            layer.support_avx512bf16_for_cpu = value


def report() -> list[str]:
    """Lines describing this CPU for a test log or a notebook: model, flags, llama.cpp, bnb."""
    from helpers.quantize.install import llama_build_info

    flags = cpu_flags()
    simd = " ".join(f for f in SIMD_FLAGS if f in flags) or "(none of the tracked flags)"
    bnb = "packed AVX-512-BF16 kernel" if bnb_packed_cpu_path() else "generic (dequantize + matmul)"
    return [
        f"cpu: {cpu_model()} ({platform.machine()}); SIMD: {simd}",
        f"llama.cpp build: {llama_build_info() or 'llama-cpp-python not installed'}",
        f"bitsandbytes 4-bit CPU inference: {bnb}",
    ]
