"""Merge a LoRA adapter into the unquantized base, check the saved result, load bnb variants.

A QLoRA adapter was trained against a 4-bit base, but it is merged into the 16-bit (or
32-bit) weights: merging into NF4 would add ``B @ A`` to weights that are then re-rounded to
16 levels per block, losing most of the update, and the result could not be saved as a normal
checkpoint anyway. The merge runs in the dtype the model is saved in, on the GPU when there is
one (float32 on a CPU where the base fits); memory and disk are checked before it starts. What
is checked is the saved file: reloaded, it must give base + adapter's logits within the
tolerance of its dtype (:data:`LOGIT_ATOL`); the report adds how many greedy answer tokens
it chooses alike.

    >>> from helpers.quantize import merge_adapter
    >>> report = merge_adapter(base_dir, "outputs/adapters/tiny", "outputs/merged/tiny")
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Sequence
from pathlib import Path

from helpers import env, resources
from helpers.chat_templates import inference_template
from helpers.cpu import guard_bnb_cpu

# Largest |logit| difference accepted between the saved model and base + adapter, by the dtype
# the weights are saved in. float32: summation order only. 16-bit: re-rounding W + B@A moves
# each weight by up to half a unit in the last place (2**-9 of it in bfloat16, 2**-12 in
# float16), which moves a 7B model's logits (|logit| up to ~40) by tenths at the worst of
# ~10**7 (position, token) pairs [estimated, not measured on a GPU]. A wrong merge (another
# base, a lost update) moves them by the adapter's whole effect: ``adapter_effect``.
LOGIT_ATOL = {"float32": 1e-3, "float16": 0.25, "bfloat16": 1.0}
GREEDY_TOKENS = 16  # answer tokens per check prompt whose greedy choice must survive the merge


class QuantizedBaseError(ValueError):
    """Someone tried to merge an adapter into a quantized (4-/8-bit) base model."""


def _is_quantized(model) -> bool:
    return bool(
        getattr(model, "is_loaded_in_4bit", False)
        or getattr(model, "is_loaded_in_8bit", False)
        or getattr(model.config, "quantization_config", None)
    )


def _greedy(model, ids: list[int], n: int, eos: int | None) -> list[int]:
    """``ids`` and up to ``n`` argmax tokens after them (no sampling settings apply)."""
    import torch

    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([out], device=model.device)).logits[0, -1]
            out.append(int(logits.argmax()))
            if out[-1] == eos:
                break
    return out


def _logits(model, sequences: Sequence[list[int]]):
    """Float32 logits for each token sequence, one by one (no padding effects)."""
    import torch

    with torch.no_grad():
        return [
            model(input_ids=torch.tensor([s], device=model.device)).logits[0].float().cpu()
            for s in sequences  # (seq_len, vocab)
        ]


def merge_plan(
    base: str | Path, out_dir: str | Path, save_dtype: str | None = None, device: str | None = None
) -> dict:
    """Where and in which dtype to merge; raises first if memory or disk will not hold it."""
    import torch

    base, out_dir = Path(base), Path(out_dir)
    gpu = env.gpu_info()
    save = save_dtype or ("float16" if gpu is not None and not gpu.bf16 else "bfloat16")
    if save not in LOGIT_ATOL:
        raise ValueError(f"save_dtype must be one of {sorted(LOGIT_ATOL)}, not {save!r}")
    n = resources.checkpoint_params(base)
    what = f"merging the adapter into {base.name} ({n / 1e9:.2f}B parameters"
    if device is None:
        device = "cpu"
        if gpu is not None:
            need, free = resources.merge_bytes(n, save), torch.cuda.mem_get_info()[0]
            if free >= need:
                device = "cuda"
            else:
                warnings.warn(
                    f"{what}) needs {need / env.GIB:.1f} GiB on the GPU and {free / env.GIB:.1f} "
                    "GiB is free: merging on the CPU instead (shut down other kernels that hold "
                    "the GPU to merge there).",
                    stacklevel=3,
                )
    merge = save
    if device == "cpu":  # float32 is exact; take it where it fits, else the saved dtype
        memory = resources.available_memory()
        fp32 = resources.merge_bytes(n, "float32") + resources.MEMORY_MARGIN
        merge = "float32" if memory.available >= fp32 else save
        need = resources.merge_bytes(n, merge)
        resources.check_memory(need, f"{what}, {merge} on the CPU)", memory=memory)
    written = resources.existing_bytes(*out_dir.glob("*.safetensors"))  # overwritten
    need_disk = max(resources.checkpoint_bytes(n, save) - written, 0)
    resources.check_output_disk(out_dir, need_disk, f"the merged model ({save}, {n / 1e9:.2f}B)")
    return {"device": device, "merge_dtype": merge, "save_dtype": save, "n_params": n}


def _delete_weights(out_dir: Path) -> None:
    for path in [*out_dir.glob("*.safetensors"), out_dir / "model.safetensors.index.json"]:
        path.unlink(missing_ok=True)


def merge_adapter(
    base: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    check_prompts: Sequence[str] = ("你好，请介绍一下你自己。", "订单 A1024 的退款到账了吗？"),
    save_dtype: str | None = None,
    atol: float | None = None,
    device: str | None = None,
) -> dict:
    """Merge ``adapter_dir`` into the base checkpoint folder ``base``; save and verify the result.

    ``save_dtype`` defaults to the GPU's (bfloat16 where native, float16 on a T4; bfloat16 on a
    CPU); ``atol`` to :data:`LOGIT_ATOL` for it. Saved with the inference chat template and EOS
    in the generation config; weights that fail the check are deleted again.
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
    plan = merge_plan(base, out_dir, save_dtype, device)
    save, atol = plan["save_dtype"], LOGIT_ATOL[plan["save_dtype"]] if atol is None else atol
    load = {"dtype": getattr(torch, plan["merge_dtype"]), "device_map": {"": plan["device"]}}

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, **load), adapter_dir
    )
    model.eval()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in check_prompts
    ]
    prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    sequences = [_greedy(model, ids, GREEDY_TOKENS, tokenizer.eos_token_id) for ids in prompt_ids]
    with_adapter = _logits(model, sequences)
    with model.disable_adapter():
        without = _logits(model, sequences)
    merged = model.merge_and_unload().to(getattr(torch, save))
    merged.generation_config.eos_token_id = tokenizer.eos_token_id
    merged.save_pretrained(out_dir)
    tokenizer.chat_template = inference_template(tokenizer.chat_template)
    tokenizer.save_pretrained(out_dir)
    del model, merged  # one copy of the weights at a time: free it before reloading
    gc.collect()
    if plan["device"] == "cuda":
        torch.cuda.empty_cache()

    saved = AutoModelForCausalLM.from_pretrained(out_dir, **load).eval()  # what was written
    after = _logits(saved, sequences)
    del saved
    diff = max((a - b).abs().max().item() for a, b in zip(after, with_adapter, strict=True))
    effect = max((a - b).abs().max().item() for a, b in zip(with_adapter, without, strict=True))
    # the positions that chose each answer token; a near-tie (top-2 gap below the rounding
    # error) may flip in 16 bits, which is why agreement is a share and not a pass/fail
    answers = [slice(len(ids) - 1, -1) for ids in prompt_ids]
    same = torch.cat(
        [
            a[s].argmax(-1) == b[s].argmax(-1)
            for a, b, s in zip(after, with_adapter, answers, strict=True)
        ]
    )
    if diff > atol:
        _delete_weights(out_dir)
        raise AssertionError(
            f"The merged model saved in {out_dir} ({save}) gives logits {diff:.2e} away from "
            f"base + adapter (tolerance for {save}: {atol}; the adapter itself moves them by "
            f"{effect:.2e}), so its weights were deleted again. Check that {base} is the base "
            "the adapter was trained on (adapter_config.json, base_model_name_or_path)."
        )
    return {
        "out_dir": str(out_dir),
        "device": plan["device"],
        "merge_dtype": plan["merge_dtype"],
        "saved_dtype": save,
        "checked": "the saved files, reloaded",
        "max_abs_logit_diff": diff,
        "atol": atol,
        "same_greedy_tokens": bool(same.all()),
        "greedy_agreement": same.float().mean().item(),  # share of answer tokens chosen alike
        "greedy_tokens_checked": len(same),
        "adapter_effect": effect,
        "size_mb": sum(p.stat().st_size for p in out_dir.glob("*.safetensors")) / 2**20,
    }


def compute_dtype():
    """float32 on CPU; on a GPU bfloat16 where the hardware has it (Ampere+), else float16 (T4).

    ``env.gpu_info().bf16`` asks the hardware: ``torch.cuda.is_bf16_supported()`` also counts
    emulation, so it says yes on a T4, where bfloat16 runs slowly.
    """
    import torch

    gpu = env.gpu_info()
    if gpu is None:
        return torch.float32
    return torch.bfloat16 if gpu.bf16 else torch.float16


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
