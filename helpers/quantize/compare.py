"""Compare the deployable variants of one fine-tuned model on size, speed and quality.

Every variant answers the same held-out rows with greedy decoding and is scored the same
way as notebook 04: perplexity of the reference answers (assistant tokens only, teacher
forcing) and the main task's field accuracy. transformers runs the 16-bit and bitsandbytes
variants, llama.cpp the GGUF files; both use the same number of CPU threads.

    >>> from helpers.quantize import Variant, compare_variants
    >>> table = compare_variants([Variant("16-bit", "hf", merged_dir)], tokenizer, rows, 64)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    """One way to ship the model: ``hf`` (transformers, optional bnb ``bits``) or ``gguf``."""

    name: str
    kind: str  # "hf" or "gguf"
    path: Path
    bits: int | None = None  # bitsandbytes 8 or 4 for kind "hf"; None = as saved
    generate: bool = True  # False: skip generation (field accuracy), e.g. bnb on CPU (slow)


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else list(path.glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) / 2**20


def prompt_ids(tokenizer, conversation: list[dict]) -> list[int]:
    """Token ids of a conversation's prompt (all but the answer) with the reply cue."""
    text = tokenizer.apply_chat_template(
        conversation[:-1], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False).input_ids


class HFRunner:
    """A transformers model (16-bit as saved, or bitsandbytes 8/4-bit) behind one interface."""

    def __init__(self, variant: Variant):
        import torch
        from transformers import AutoModelForCausalLM

        from helpers.quantize.merge import compute_dtype, load_bnb

        if variant.bits:
            self.model, _ = load_bnb(variant.path, variant.bits)
        else:
            # CPUs without bfloat16 units run 16-bit matmuls several times slower, so on CPU
            # the 16-bit file is computed in float32 (same weights, exactly representable).
            self.model = AutoModelForCausalLM.from_pretrained(
                variant.path,
                dtype=compute_dtype(),
                device_map={"": "cuda" if torch.cuda.is_available() else "cpu"},
            ).eval()
        self.memory_mb = self.model.get_memory_footprint() / 2**20
        self.torch = torch
        self.device = self.model.device

    def evaluate(self, tokenizer, conversations, max_new_tokens: int, generate: bool):
        """Perplexity of the reference answers and greedy answers: notebook 04's own functions."""
        from helpers.evaluation.generation import generate_batch
        from helpers.evaluation.tokens import score_tokens, set_perplexity

        ppl = set_perplexity(score_tokens(self.model, tokenizer, conversations, progress=False))
        if not generate:
            return ppl, []
        prompts = [c[:-1] for c in conversations]
        return ppl, generate_batch(self.model, tokenizer, prompts, max_new_tokens, progress=False)

    def speed(self, prompt: list[int], n_new: int) -> tuple[float, float]:
        """Prompt (prefill) and decode tokens per second."""
        from helpers.evaluation.generation import greedy_config

        torch = self.torch
        ids = torch.tensor([prompt], device=self.device)  # (1, prompt_len)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else lambda: None
        with torch.no_grad():
            sync()
            t0 = time.perf_counter()
            self.model(input_ids=ids)
            sync()  # GPU kernels run asynchronously: wait for them before reading the clock
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            config = greedy_config(self.model, n_new, min_new_tokens=n_new)
            self.model.generate(input_ids=ids, generation_config=config)
            sync()
            total = time.perf_counter() - t0
        return len(prompt) / prefill, n_new / max(total - prefill, 1e-9)


class GGUFRunner:
    """A GGUF file in llama.cpp (llama-cpp-python), fed the same token ids as transformers."""

    def __init__(self, variant: Variant, n_ctx: int = 512):
        import numpy as np
        import torch

        from helpers.quantize.install import load_llama_cpp

        # logits_all keeps every position's logits (n_ctx × vocab floats) for perplexity
        self.llm = load_llama_cpp().Llama(
            str(variant.path),
            n_ctx=n_ctx,
            logits_all=True,
            n_threads=torch.get_num_threads(),
            verbose=False,
        )
        self.memory_mb = _size_mb(variant.path)
        self.np = np

    def nll(self, ids: list[int], mask: list[int]) -> tuple[float, int]:
        """Summed negative log-likelihood of the masked tokens, and their count."""
        np = self.np
        self.llm.reset()
        self.llm.eval(ids)
        logits = np.asarray(self.llm.scores[: len(ids)], dtype=np.float64)  # (seq, vocab)
        pos = [t for t in range(len(ids) - 1) if mask[t + 1]]
        rows = logits[pos]
        top = rows.max(axis=1, keepdims=True)
        logz = (top + np.log(np.exp(rows - top).sum(axis=1, keepdims=True)))[:, 0]
        picked = rows[np.arange(len(pos)), [ids[t + 1] for t in pos]]
        return float((logz - picked).sum()), len(pos)

    def generate(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation token ids (stops at EOS)."""
        self.llm.reset()
        out: list[int] = []
        for token in self.llm.generate(prompt, temp=0.0, reset=True):
            if token == self.llm.token_eos() or len(out) >= max_new_tokens:
                break
            out.append(token)
        return out

    def evaluate(self, tokenizer, conversations, max_new_tokens: int, generate: bool):
        """Perplexity of the reference answers (training's loss mask) and greedy answers."""
        from tqdm.auto import tqdm

        from helpers.data.lossmask import loss_mask
        from helpers.evaluation.metrics import perplexity

        nll, n_tok, answers = 0.0, 0, []
        for conv in tqdm(conversations, desc="llama.cpp", leave=False):
            a, n = self.nll(*loss_mask({"messages": conv}, tokenizer, "assistant_only"))
            nll, n_tok = nll + a, n_tok + n
            if generate:
                new = self.generate(prompt_ids(tokenizer, conv), max_new_tokens)
                answers.append(tokenizer.decode(new, skip_special_tokens=True))
        return perplexity(nll, n_tok), answers

    def speed(self, prompt: list[int], n_new: int) -> tuple[float, float]:
        """Prompt (prefill) and decode tokens per second."""
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(prompt)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n_new):  # greedy, EOS ignored so every variant decodes n_new tokens
            self.llm.eval([self.llm.sample(temp=0.0)])
        return len(prompt) / prefill, n_new / (time.perf_counter() - t0)

    def close(self) -> None:
        """Free llama.cpp's model and context now rather than at interpreter exit."""
        self.llm.close()


def load_runner(variant: Variant) -> tuple[HFRunner | GGUFRunner, float]:
    """The variant loaded, and the seconds that took."""
    t0 = time.perf_counter()
    runner = GGUFRunner(variant) if variant.kind == "gguf" else HFRunner(variant)
    return runner, time.perf_counter() - t0


def measure_variant(
    variant: Variant,
    tokenizer,
    conversations: Sequence[list[dict]],
    max_new_tokens: int,
    speed_tokens: int = 32,
) -> dict:
    """Size, load time, speed, perplexity and field accuracy of one variant; answers too.

    ``conversations`` end with the reference answer; ``tokenizer`` is the one training used
    (the adapter folder's: its template marks the answer tokens that perplexity scores).
    """
    import gc

    from helpers.evaluation.metrics import task_scores

    runner, load_s = load_runner(variant)
    ppl, answers = runner.evaluate(tokenizer, conversations, max_new_tokens, variant.generate)
    prompt_tps, decode_tps = runner.speed(prompt_ids(tokenizer, conversations[-1]), speed_tokens)
    nan = float("nan")
    scores = (
        task_scores(answers, [c[-1]["content"] for c in conversations])
        if answers
        else {"field_accuracy": nan, "json_valid": nan}
    )
    memory_mb = runner.memory_mb
    if hasattr(runner, "close"):
        runner.close()
    del runner
    gc.collect()
    return {
        "variant": variant.name,
        # bitsandbytes quantizes at load time: no file of its own, so its size is in RAM
        "size_mb": memory_mb if variant.bits else _size_mb(variant.path),
        "size_of": "weights in RAM" if variant.bits else "file on disk",
        "load_s": load_s,
        "prompt_tok_s": prompt_tps,
        "decode_tok_s": decode_tps,
        "perplexity": ppl,
        "field_accuracy": scores["field_accuracy"],
        "json_valid": scores["json_valid"],
        "answers": answers,
    }


def compare_variants(
    variants: Sequence[Variant],
    tokenizer,
    conversations: Sequence[list[dict]],
    max_new_tokens: int,
    speed_tokens: int = 32,
):
    """Measure every variant on the same rows; a DataFrame indexed by variant (answers apart)."""
    import pandas as pd

    rows = [
        measure_variant(v, tokenizer, conversations, max_new_tokens, speed_tokens) for v in variants
    ]
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "answers"} for r in rows])
    frame = frame.set_index("variant")
    frame.attrs["answers"] = {r["variant"]: r["answers"] for r in rows}
    return frame


def plot_comparison(frame, title: str = "variants of the fine-tuned model"):
    """Four panels: size, decode speed, perplexity, field accuracy (one bar per variant)."""
    import matplotlib.pyplot as plt

    panels = [
        ("size_mb", "file size (MB)"),
        ("decode_tok_s", "decode tokens/s"),
        ("perplexity", "perplexity (lower is better)"),
        ("field_accuracy", "field accuracy (higher is better)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (col, label) in zip(axes, panels, strict=True):
        values = frame[col].astype(float)
        ax.bar(frame.index, values.fillna(0), color="tab:blue")
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        for i, v in enumerate(values):
            ax.text(
                i,
                0 if math.isnan(v) else v,
                "n/a" if math.isnan(v) else f"{v:.3g}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    fig.suptitle(title)
    fig.tight_layout()
    return fig
