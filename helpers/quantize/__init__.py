"""Quantization (notebook 05): merge the adapter, export GGUF, compare the variants.

- ``merge``: LoRA merged into the unquantized base with a logits check; bitsandbytes loading
- ``gguf_export``: llama.cpp's converter and quantizer (f16, q8_0, q4_k_m); template/EOS checks
- ``install``: llama-cpp-python built for any AVX2 CPU (no AVX-512/AMX), and the converter
- ``compare``: size, load time, prompt/decode speed, perplexity and field accuracy per variant
- :func:`quantize_gpu_format`: GPTQ/AWQ through llm-compressor, GPU only;
  :func:`gpu_formats_status` says why they are skipped elsewhere

    >>> from helpers import quantize
    >>> report = quantize.merge_adapter(base_dir, adapter_dir, "outputs/merged/tiny")
    >>> files = quantize.export_gguf("outputs/merged/tiny", "outputs/gguf/tiny")
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from helpers.quantize.compare import Variant, compare_variants, measure_variant, plot_comparison
from helpers.quantize.gguf_export import (
    GGUF_KINDS,
    check_gguf,
    convert_to_gguf,
    export_base_gguf,
    export_gguf,
    gguf_info,
    quantize_gguf,
)
from helpers.quantize.install import (
    ConverterMissingError,
    NativeBuildError,
    converter_dir,
    converter_install_command,
    install_converter,
    install_llama_cpp,
    load_llama_cpp,
)
from helpers.quantize.merge import QuantizedBaseError, inference_template, load_bnb, merge_adapter

# GPU-only weight formats: 4-bit weights, 16-bit activations, calibrated on sample inputs;
# llm-compressor writes them in the compressed-tensors format that vLLM loads directly.
GPU_FORMATS = {"GPTQ W4A16": "llmcompressor", "AWQ W4A16": "llmcompressor"}


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


def quantize_gpu_format(
    merged_dir: str | Path,
    out_dir: str | Path,
    fmt: str,
    calibration: Sequence[str],
    max_seq_length: int = 512,
) -> Path:
    """GPTQ or AWQ (W4A16) with llm-compressor on a GPU; raises with the reason elsewhere.

    ``calibration`` are texts like the deployment's inputs (e.g. chat-templated training rows);
    the result is a compressed-tensors checkpoint that ``vllm serve`` loads as it is.
    """
    status = {r["format"]: r["status"] for r in gpu_formats_status()}
    if fmt not in status:
        raise ValueError(f"fmt must be one of {sorted(status)}, not {fmt!r}")
    if status[fmt] != "available":
        raise RuntimeError(f"{fmt}: {status[fmt]}")
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype="auto", device_map="cuda")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ids = [tokenizer(t, truncation=True, max_length=max_seq_length).input_ids for t in calibration]
    modifier = GPTQModifier if fmt.startswith("GPTQ") else AWQModifier
    oneshot(
        model=model,
        dataset=Dataset.from_dict({"input_ids": ids}),
        recipe=modifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]),
        max_seq_length=max_seq_length,
        num_calibration_samples=len(ids),
    )
    model.save_pretrained(out_dir, save_compressed=True)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


__all__ = [
    "GGUF_KINDS",
    "GPU_FORMATS",
    "ConverterMissingError",
    "NativeBuildError",
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
    "install_llama_cpp",
    "load_bnb",
    "load_llama_cpp",
    "measure_variant",
    "merge_adapter",
    "plot_comparison",
    "quantize_gguf",
    "quantize_gpu_format",
]
