"""Quantization (notebook 05): merge the adapter, export GGUF, compare the variants.

- ``merge``: LoRA merged into the unquantized base with a logits check; bitsandbytes loading
- ``gguf_export``: llama.cpp's converter and quantizer (f16, q8_0, q4_k_m); template/EOS checks
- ``compare``: size, load time, prompt/decode speed, perplexity and field accuracy per variant
- :func:`gpu_formats_status`: GPTQ/AWQ need a GPU; on CPU they are skipped with the reason

    >>> from helpers import quantize
    >>> report = quantize.merge_adapter(base_dir, adapter_dir, "outputs/merged/tiny")
    >>> files = quantize.export_gguf("outputs/merged/tiny", "outputs/gguf/tiny")
"""

from __future__ import annotations

import importlib.util

from helpers.quantize.compare import Variant, compare_variants, measure_variant, plot_comparison
from helpers.quantize.gguf_export import (
    GGUF_KINDS,
    ConverterMissingError,
    check_gguf,
    convert_to_gguf,
    converter_dir,
    converter_install_command,
    export_base_gguf,
    export_gguf,
    gguf_info,
    install_converter,
    quantize_gguf,
)
from helpers.quantize.merge import QuantizedBaseError, inference_template, load_bnb, merge_adapter

# GPU-only weight formats and the package that produces each (installed on a GPU machine only).
GPU_FORMATS = {"GPTQ (4-bit)": "gptqmodel", "AWQ (4-bit)": "llmcompressor"}


def gpu_formats_status(cuda_available: bool | None = None) -> list[dict]:
    """Whether each GPU-only format can run here, and if not, why (never raises)."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    rows = []
    for fmt, package in GPU_FORMATS.items():
        if not cuda_available:
            reason = "skipped: needs a CUDA GPU (calibration runs the model on the GPU)"
        elif importlib.util.find_spec(package) is None:
            reason = f"skipped: pip install {package} (GPU machines only)"
        else:
            reason = "available"
        rows.append({"format": fmt, "package": package, "status": reason})
    return rows


__all__ = [
    "GGUF_KINDS",
    "GPU_FORMATS",
    "ConverterMissingError",
    "QuantizedBaseError",
    "Variant",
    "check_gguf",
    "compare_variants",
    "convert_to_gguf",
    "converter_dir",
    "converter_install_command",
    "export_base_gguf",
    "export_gguf",
    "gguf_info",
    "gpu_formats_status",
    "inference_template",
    "install_converter",
    "load_bnb",
    "measure_variant",
    "merge_adapter",
    "plot_comparison",
    "quantize_gguf",
]
