"""Merge a LoRA adapter into the unquantized base, check it, and load bitsandbytes variants.

A QLoRA adapter was trained against a 4-bit base, but it is merged into the 16-bit (or
32-bit) weights: merging into NF4 would add ``B @ A`` to weights that are then re-rounded to
16 levels per block, losing most of the update, and the result could not be saved as a normal
checkpoint anyway. The merged model must give the same logits as base + adapter; that is
checked before anything is saved.

    >>> from helpers.quantize import merge_adapter
    >>> report = merge_adapter(base_dir, "outputs/adapters/tiny", "outputs/merged/tiny")
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from helpers.cpu import guard_bnb_cpu

# transformers' `{% generation %}` markers only tell training which tokens carry loss; inference
# tools (llama.cpp, vLLM, Ollama) do not know the tag, so merged models ship the template without.
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


class QuantizedBaseError(ValueError):
    """Someone tried to merge an adapter into a quantized (4-/8-bit) base model."""


def inference_template(template: str | None) -> str | None:
    """The chat template without transformers' training-only ``{% generation %}`` markers."""
    return None if template is None else _GENERATION_TAG.sub("", template)


def _is_quantized(model) -> bool:
    return bool(
        getattr(model, "is_loaded_in_4bit", False)
        or getattr(model, "is_loaded_in_8bit", False)
        or getattr(model.config, "quantization_config", None)
    )


def _logits(model, tokenizer, prompts: Sequence[str]):
    """Float32 logits for each prompt, unpadded one by one (exact, no padding effects)."""
    import torch

    out = []
    with torch.no_grad():
        for p in prompts:
            ids = tokenizer(p, return_tensors="pt").input_ids.to(model.device)
            out.append(model(input_ids=ids).logits[0].float().cpu())  # (seq_len, vocab)
    return out


def merge_adapter(
    base: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    check_prompts: Sequence[str] = ("你好，请介绍一下你自己。", "订单 A1024 的退款到账了吗？"),
    save_dtype: str = "bfloat16",
    atol: float = 1e-3,
) -> dict:
    """Merge ``adapter_dir`` into the base checkpoint at ``base``; save it in ``save_dtype``.

    The merge runs in float32 (exact); merged logits must equal base + adapter logits within
    ``atol``. Saved with the inference chat template and EOS in the generation config.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(base, (str, Path)):
        if _is_quantized(base):
            raise QuantizedBaseError(
                "This base model is loaded in 4/8-bit. Merge the adapter into the unquantized "
                "base instead: pass the checkpoint folder (models.model_path(profile)); the "
                "adapter is float and its update would be lost in re-rounding to 4-bit."
            )
        raise TypeError("pass the base checkpoint's folder, so it is loaded unquantized")
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in check_prompts
    ]
    with_adapter = _logits(model, tokenizer, prompts)
    with model.disable_adapter():
        without = _logits(model, tokenizer, prompts)
    merged = model.merge_and_unload()
    after = _logits(merged, tokenizer, prompts)
    diff = max((a - b).abs().max().item() for a, b in zip(after, with_adapter, strict=True))
    adapter_effect = max(
        (a - b).abs().max().item() for a, b in zip(with_adapter, without, strict=True)
    )
    if diff > atol:
        raise AssertionError(
            f"merged logits differ from base + adapter by {diff:.2e} > atol={atol}: "
            "the merge is wrong (was the base the one the adapter was trained on?)"
        )
    same_argmax = all(
        torch.equal(a.argmax(-1), b.argmax(-1)) for a, b in zip(after, with_adapter, strict=True)
    )
    merged = merged.to(getattr(torch, save_dtype))
    merged.generation_config.eos_token_id = tokenizer.eos_token_id
    merged.save_pretrained(out_dir)
    tokenizer.chat_template = inference_template(tokenizer.chat_template)
    tokenizer.save_pretrained(out_dir)
    return {
        "out_dir": str(out_dir),
        "max_abs_logit_diff": diff,
        "atol": atol,
        "same_greedy_tokens": same_argmax,
        "adapter_effect": adapter_effect,
        "saved_dtype": save_dtype,
        "size_mb": sum(p.stat().st_size for p in out_dir.glob("*.safetensors")) / 2**20,
    }


def compute_dtype():
    """float32 on CPU; on a GPU bfloat16 where supported (Ampere+), else float16 (T4)."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_bnb(path: str | Path, bits: int):
    """Load a merged checkpoint with bitsandbytes in 8-bit (LLM.int8) or 4-bit NF4."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dtype = compute_dtype()
    if bits == 8:
        config = BitsAndBytesConfig(load_in_8bit=True)
    elif bits == 4:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",  # normal-float 4-bit, as in QLoRA
            bnb_4bit_use_double_quant=True,  # quantize the scales too (~0.4 bit/param saved)
            bnb_4bit_compute_dtype=dtype,
        )
    else:
        raise ValueError(f"bits must be 8 or 4, not {bits}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=config, device_map={"": device}, dtype=dtype
    )
    if bits == 4 and device == "cpu":
        guard_bnb_cpu(model)  # bitsandbytes' AVX-512-BF16 kernel takes only some layer sizes
    return model.eval(), AutoTokenizer.from_pretrained(path)
