"""Supervised fine-tuning with TRL 1.x + peft: configs from a profile, a trainer, callbacks, checks.

Everything a notebook needs to train a LoRA/QLoRA adapter on the course's ``{"messages"}``
rows: ``lora_config`` and ``sft_config`` read the profile (precision, batch, steps, LoRA rank),
``make_trainer`` builds TRL's ``SFTTrainer`` with assistant-only loss, ``train`` runs (or
resumes) it and returns a summary, and ``reload_check`` proves the saved adapter reloads.

What TRL 1.16 / transformers 5.x already do, so this module does not repeat it:

* ``SFTConfig`` defaults to checkpointing on and bf16 on (a T4 has no bf16): both are set here
  from the profile. transformers 5 renamed ``gradient_checkpointing`` to
  ``activation_checkpointing``; the Trainer enables it non-reentrant and the model turns on
  input grads itself, TRL again for peft models. ``compute_loss`` passes ``use_cache=False``.
* TRL no longer calls peft's ``prepare_model_for_kbit_training`` (no fp32 upcast of norms and
  embeddings) and casts a quantized model's adapters to bf16; ``make_trainer`` casts them back
  to fp32 on every profile. fp16 AMP needs fp32 master weights; under bf16 autocast the matmuls
  still run in bf16, but Adam's small updates are not rounded away, and the adapter is saved
  and reloaded (peft loads adapters as fp32) at the precision it was trained in, so
  ``reload_check`` compares like with like.
* With ``eos_token`` unset TRL leaves the EOS alone; ``helpers.models.check_template_and_eos``
  checks that the end-of-turn token is trained and stops generation.

Example::

    >>> from helpers.sft import make_trainer, train
    >>> trainer = make_trainer(model, tokenizer, train_rows, eval_rows, profile, "outputs/sft")
    >>> summary = train(trainer)  # {"first_loss": ..., "final_loss": ..., "tokens_per_s": ...}
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from transformers import EarlyStoppingCallback, TrainerCallback

from helpers.cpu import bnb_generic_path, train_on_generic_bnb_path
from helpers.data.lossmask import apply_turn_weights, trl_loss_options
from helpers.env import detect_platform, platform_path
from helpers.profiles import Profile
from helpers.vram import ModelShape

AUTODL_TB_DIR = "/root/tf-logs"  # AutoDL's TensorBoard panel reads this folder
# Dense 16-bit tensor-core peak FLOP/s (datasheets, no sparsity), matched by GPU name.
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is ~756e12
    "A100": 312e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "L4": 121e12,
    "A10G": 70e12,
    "T4": 65e12,
}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def lora_config(profile: Profile, **overrides: Any):  # -> peft.LoraConfig
    """A peft LoraConfig from the profile: alpha = 2r unless given, bias none, causal LM."""
    from peft import LoraConfig

    r = overrides.pop("r", profile.lora_r)
    alpha = overrides.pop("lora_alpha", profile.lora_alpha if r == profile.lora_r else 2 * r)
    targets = overrides.pop("target_modules", profile.target_modules)
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=overrides.pop("lora_dropout", profile.lora_dropout),
        target_modules=targets if isinstance(targets, str) else list(targets),
        task_type=overrides.pop("task_type", "CAUSAL_LM"),
        bias=overrides.pop("bias", "none"),
        **overrides,
    )


def tensorboard_dir(output_dir: str | Path) -> Path:
    """Where TensorBoard logs go: /root/tf-logs/<run> on AutoDL, else <output_dir>/runs."""
    if detect_platform() == "autodl":
        return platform_path(AUTODL_TB_DIR) / Path(output_dir).name
    return Path(output_dir) / "runs"


def default_report_to() -> list[str]:
    """["tensorboard"] when it is installed, else [] (transformers would raise without it)."""
    import importlib.util

    return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []


def precision_and_checkpointing(config_class, profile: Profile, overrides: dict) -> dict:
    """fp16/bf16 and activation checkpointing for a TRL config, taken out of ``overrides``.

    TRL's configs default to bf16=True, which a T4 (fp16 only) and fp32 CPU runs must undo;
    the profile's dtype decides. Checkpointing goes under the name ``config_class`` has
    (``activation_checkpointing`` since transformers 5.x, ``gradient_checkpointing`` before).
    """
    o = overrides.pop
    ckpt = o(
        "activation_checkpointing", o("gradient_checkpointing", profile.gradient_checkpointing)
    )
    fields = {f.name for f in dataclasses.fields(config_class)}
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )
    return {
        "fp16": o("fp16", profile.dtype == "float16"),
        "bf16": o("bf16", profile.dtype == "bfloat16"),
        name: ckpt,
    }


def sft_config(profile: Profile, output_dir: str | Path, **overrides: Any):  # -> trl.SFTConfig
    """A TRL SFTConfig from the profile; any SFTConfig field can be overridden by keyword.

    Packing is off by default: packed samples share one row, so short chat samples waste no
    padding, but the loss masks and per-sample length statistics of the course stay simpler
    without it (``packing=True`` turns it on; TRL then trains padding-free).
    """
    import torch
    from trl import SFTConfig

    o = overrides.pop
    cuda = torch.cuda.is_available()
    if "num_train_epochs" in overrides and "max_steps" not in overrides:
        overrides["max_steps"] = -1  # epochs decide the length
    max_steps = o("max_steps", profile.max_steps)
    save_steps = o("save_steps", max(1, (max_steps if max_steps > 0 else 100) // 4))
    precision_ckpt = precision_and_checkpointing(SFTConfig, profile, overrides)
    return SFTConfig(
        output_dir=str(output_dir),
        learning_rate=o("learning_rate", profile.learning_rate),
        lr_scheduler_type=o("lr_scheduler_type", "cosine"),
        warmup_steps=o("warmup_steps", 0.05),  # < 1: a fraction of the total steps
        max_steps=max_steps,
        per_device_train_batch_size=o("per_device_train_batch_size", profile.per_device_batch_size),
        per_device_eval_batch_size=o("per_device_eval_batch_size", profile.per_device_batch_size),
        gradient_accumulation_steps=o(
            "gradient_accumulation_steps", profile.gradient_accumulation_steps
        ),
        max_length=o("max_length", profile.max_length),
        packing=o("packing", False),
        optim=o("optim", profile.optimizer),
        logging_steps=o("logging_steps", 1 if 0 < max_steps <= 50 else 10),
        save_strategy=o("save_strategy", "steps"),
        save_steps=save_steps,
        save_total_limit=o("save_total_limit", 2),
        eval_strategy=o("eval_strategy", "no"),
        eval_steps=o("eval_steps", save_steps),
        report_to=o("report_to", default_report_to()),
        seed=o("seed", 42),
        use_cpu=o("use_cpu", not cuda),
        dataloader_num_workers=o("dataloader_num_workers", 0),  # worker processes cost on 2 cores
        dataloader_pin_memory=o("dataloader_pin_memory", cuda),
        include_num_input_tokens_seen=o("include_num_input_tokens_seen", "non_padding"),
        **{**trl_loss_options("assistant_only"), **precision_ckpt, **overrides},
    )


def _dataset(rows: Iterable[dict] | Mapping[str, Iterable[dict]] | None):
    """A datasets.Dataset with only the "messages" column (a dict of them for a dict), or None."""
    if rows is None:
        return None
    if isinstance(rows, Mapping):  # channels: the Trainer logs eval_<name>_loss for each
        return {name: _dataset(part) for name, part in rows.items()}
    from datasets import Dataset

    rows = list(rows)
    missing = [i for i, row in enumerate(rows) if "messages" not in row]
    if missing:
        raise ValueError(
            f'Rows {missing[:5]} have no "messages" key; build rows with helpers.data.load_split '
            'or convert them to {"messages": [...]} first.'
        )
    return Dataset.from_list([{"messages": row["messages"]} for row in rows])


def make_trainer(
    model,
    tokenizer,
    train_rows: Iterable[dict],
    eval_rows: Iterable[dict] | Mapping[str, Iterable[dict]] | None,
    profile: Profile,
    output_dir: str | Path,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    early_stopping_patience: int | None = None,
    lora: dict | None = None,
    course_loss: bool = True,
    **config_overrides: Any,
):  # -> trl.SFTTrainer
    """An SFTTrainer on the rows with a LoRA adapter from the profile (``lora`` overrides it).

    ``course_loss`` (default) trains with :class:`helpers.sft_trainer.CourseSFTTrainer`, whose
    LM head on a CPU projects only label positions; False gives TRL's own trainer, unchanged.
    peft injects the adapter into ``model`` in place: load a fresh model for another run.
    A ``PeftModel`` (an adapter loaded with ``is_trainable=True``, e.g. 07's round 2 continuing
    round 1) keeps training its own adapter: TRL refuses a second ``peft_config`` on it.
    """
    from peft import PeftModel
    from trl import SFTTrainer

    from helpers.sft_trainer import CourseSFTTrainer

    callbacks = list(callbacks)
    if eval_rows is not None:
        config_overrides.setdefault("eval_strategy", "steps")
    if early_stopping_patience is not None:
        if eval_rows is None:
            raise ValueError("Early stopping watches the eval loss: pass eval_rows.")
        if "eval_steps" in config_overrides:  # checkpoints must land on eval steps
            config_overrides.setdefault("save_steps", config_overrides["eval_steps"])
        config_overrides.update(
            load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False
        )
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    continuing = isinstance(model, PeftModel)
    if continuing and lora:
        raise ValueError(
            "model already has its adapter (a PeftModel): its LoRA settings were fixed when it "
            "was trained; drop lora=..., or load the base model to train a new adapter."
        )
    config = sft_config(profile, output_dir, **config_overrides)
    # transformers 5 has no logging_dir argument: its TensorBoard callback reads this variable
    with mock.patch.dict(os.environ, {"TENSORBOARD_LOGGING_DIR": str(tensorboard_dir(output_dir))}):
        trainer = (CourseSFTTrainer if course_loss else SFTTrainer)(
            model=model,
            args=config,
            train_dataset=_dataset(train_rows),
            eval_dataset=_dataset(eval_rows),
            processing_class=tokenizer,
            peft_config=None if continuing else lora_config(profile, **(lora or {})),
            callbacks=callbacks,
        )
    # OpenAI's per-turn weight 0 (08's jobs): that turn's labels become -100 after TRL's own
    # masks; TRL has no per-turn option, and its assistant mask already marks each turn's span
    only = config.assistant_only_loss
    trainer.train_dataset = apply_turn_weights(trainer.train_dataset, only)
    evals = trainer.eval_dataset
    trainer.eval_dataset = (
        {name: apply_turn_weights(part, only) for name, part in evals.items()}
        if isinstance(evals, dict)
        else apply_turn_weights(evals, only)
    )
    return apply_dtype_policy(trainer)


def apply_dtype_policy(trainer):
    """QLoRA: adapters back to fp32 (TRL made them bf16) and, on a CPU, bnb's generic path.

    Call it on any SFTTrainer built around a 4-bit model (a no-op otherwise); see the module
    docstring for why the adapters stay fp32 and ``helpers.cpu`` for the CPU kernel.
    """
    import torch

    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else None
    quantized = any(
        getattr(m, "is_loaded_in_4bit", False) or getattr(m, "is_loaded_in_8bit", False)
        for m in (trainer.model, base)
    )
    if quantized and not torch.cuda.is_available():
        train_on_generic_bnb_path(trainer.model)  # the frozen base must not drift (helpers.cpu)
    if quantized:  # TRL made the adapters bf16; keep them fp32 on every profile (see module doc)
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    return trainer


# ---------------------------------------------------------------------------- callbacks


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where display handles update in place)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class LiveLossPlot(TrainerCallback):
    """Training and eval loss curves, redrawn in place in a notebook; ``.history`` elsewhere.

    Every loss the Trainer logs is kept: ``loss``, ``eval_loss`` and, when the eval set is a
    dict of channels, ``eval_<channel>_loss`` for each (``channels()`` reads them back).
    """

    def __init__(self, every: int = 1) -> None:
        self.history: list[dict] = []  # {"step", "<key>": loss} for each logged loss
        self.every = every
        self._handle = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Record every logged loss and redraw."""
        for key, value in (logs or {}).items():
            if key == "loss" or (key.startswith("eval_") and key.endswith("loss")):
                self.history.append({"step": state.global_step, key: float(value)})
        if _in_notebook() and state.global_step % self.every == 0:
            self._redraw()

    def channels(self):
        """Eval loss by step (rows) and channel (columns): ``eval_<channel>_loss`` keys."""
        import pandas as pd

        points = [
            (h["step"], key[len("eval_") : -len("_loss")] or "eval", value)
            for h in self.history
            for key, value in h.items()
            if key.startswith("eval_")
        ]
        frame = pd.DataFrame(points, columns=["step", "channel", "loss"])
        return frame.pivot_table(index="step", columns="channel", values="loss")

    def _redraw(self) -> None:
        """Update (or create) the notebook output with the current figure."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig, ax = plt.subplots(figsize=(6, 3.2))
        self.plot(ax)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)

    def plot(self, ax=None):
        """Loss against step on ``ax`` (a new figure if None); returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.2))
        keys = dict.fromkeys(key for h in self.history for key in h if key != "step")
        for key in keys:
            points = [(h["step"], h[key]) for h in self.history if key in h]
            style = "-" if key == "loss" else "o--"
            ax.plot(*zip(*points, strict=True), style, label=key, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if keys:
            ax.legend(fontsize="small", ncol=2 if len(keys) > 4 else 1)
        return ax


def flops_per_token(
    shape: ModelShape, n_lora: int, seq_len: int, label_share: float = 1.0
) -> float:
    """Training FLOPs per token with a frozen base: 4N + 4·V·d·label_share + 6N_lora + 12·L·d·T.

    N counts the body's matmul weights (every parameter but the embedding and the LM head).
    TRL 1.16's fused LM head projects, on CUDA, only positions that carry a label: pass
    ``label_share`` (labelled / real tokens); 1.0 counts the head at every token, as TRL does
    on CPU. Model FLOPs, as MFU counts them: the fused head's backward recompute of each
    logits tile (2·V·d per label), like checkpointing's recompute, is not counted.
    """
    counts = shape.param_counts()
    n = counts["total"] - counts["embedding"] - counts["lm_head"]
    head = shape.vocab_size * shape.hidden_size * label_share  # the LM head matmul (tied or not)
    attention = 12 * shape.num_layers * shape.hidden_size * seq_len
    return 4 * (n + head) + 6 * n_lora + attention


def dataset_label_share(dataset: Any, rows: int = 1000) -> float:
    """Share of tokens with a label in TRL's prepared rows (the first ``rows``); 1.0 if unknown."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset) or "labels" not in dataset.column_names:
        return 1.0
    labels = dataset.select_columns(["labels"])[:rows]["labels"]  # TRL: -100 = no loss
    total = sum(len(row) for row in labels)
    return sum(t != -100 for row in labels for t in row) / total if total else 1.0


def gpu_peak_flops(name: str) -> float | None:
    """Dense 16-bit peak FLOP/s for a GPU name from GPU_PEAK_FLOPS, or None if unknown."""
    words = name.upper().replace("-", " ").split()
    for key, peak in GPU_PEAK_FLOPS.items():
        parts = key.split()
        if any(words[i : i + len(parts)] == parts for i in range(len(words))):
            return peak
    return None


class ThroughputCallback(TrainerCallback):
    """Tokens/s (non-padding), samples/s, step time, peak memory and MFU (GPU) of a run.

    Needs ``include_num_input_tokens_seen="non_padding"`` (``sft_config`` sets it). Times are
    the optimizer steps' own (data loading, eval and checkpoint saves excluded). Peak memory
    is ``torch.cuda.max_memory_allocated`` on GPU, the process's peak RSS on CPU.
    """

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self._start = self._step_start = 0.0
        self.tokens = self.samples = 0
        self._tokens0 = 0
        self.wall_seconds = 0.0
        self.shape: ModelShape | None = None
        self.n_lora = 0
        self.gpu_name: str | None = None
        self.peak_memory_mb = 0.0
        self.label_share = 1.0  # labelled / real tokens: the LM head's share, for MFU

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Reset counters and the CUDA peak; read the model's shape and label share for MFU."""
        import torch

        if args.include_num_input_tokens_seen == "no":
            raise ValueError(
                "ThroughputCallback counts tokens through the Trainer: set "
                'include_num_input_tokens_seen="non_padding" (helpers.sft.sft_config does).'
            )
        self.step_seconds, self._start, self._tokens0 = [], time.perf_counter(), 0
        self._tokens0 = state.num_input_tokens_seen
        if model is not None:
            self.n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            self.shape = ModelShape.from_config(base.config)
        if torch.cuda.is_available() and not args.use_cpu:
            self.gpu_name = torch.cuda.get_device_name()
            torch.cuda.reset_peak_memory_stats()
            # TRL's fused LM head projects only labelled positions on CUDA
            data = getattr(kwargs.get("train_dataloader"), "dataset", None)
            self.label_share = dataset_label_share(data)

    def on_step_begin(self, args, state, control, **kwargs):
        """Start the step clock."""
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        """Stop the step clock."""
        self.step_seconds.append(time.perf_counter() - self._step_start)

    def on_train_end(self, args, state, control, **kwargs):
        """Collect tokens, samples, wall time and peak memory."""
        import torch

        self.wall_seconds = time.perf_counter() - self._start
        self.tokens = state.num_input_tokens_seen - self._tokens0
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.samples = (
            len(self.step_seconds) * per_step * args.world_size
        )  # last batch may be short
        if self.gpu_name is not None:
            self.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
        else:  # ru_maxrss: KiB on Linux, bytes on macOS; the whole process's peak so far
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_memory_mb = rss / (2**20 if sys.platform == "darwin" else 2**10)

    def stats(self) -> dict:
        """One row for a results table."""
        seconds = sum(self.step_seconds)
        tokens_per_s = self.tokens / seconds if seconds else 0.0
        mfu = None
        peak = gpu_peak_flops(self.gpu_name) if self.gpu_name else None
        if peak and self.shape is not None and self.samples:
            seq_len = round(self.tokens / self.samples)
            fpt = flops_per_token(self.shape, self.n_lora, seq_len, self.label_share)
            mfu = tokens_per_s * fpt / peak
        return {
            "steps": len(self.step_seconds),
            "tokens": self.tokens,
            "tokens_per_s": tokens_per_s,
            "samples_per_s": self.samples / seconds if seconds else 0.0,
            "step_time_s": seconds / len(self.step_seconds) if self.step_seconds else 0.0,
            "wall_s": self.wall_seconds,
            "peak_memory_mb": self.peak_memory_mb,
            "memory_kind": "cuda max_memory_allocated" if self.gpu_name else "peak RSS",
            "device": self.gpu_name or "cpu",
            "mfu": mfu,
        }


# ---------------------------------------------------------------------------- run, save, reload


def train(trainer, resume: bool | str = False) -> dict:
    """Run (or resume from the last checkpoint in output_dir) and summarise the run."""
    start = time.perf_counter()
    if resume is True and not list(Path(trainer.args.output_dir).glob("checkpoint-*")):
        raise FileNotFoundError(
            f"resume=True but {trainer.args.output_dir} has no checkpoint-* folder; train "
            "without resume first (checkpoints are written every save_steps)."
        )
    result = trainer.train(resume_from_checkpoint=resume or None)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    summary = {
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "final_eval_loss": evals[-1] if evals else None,
        "train_loss": result.training_loss,
        "minutes": (time.perf_counter() - start) / 60,
        "best_checkpoint": trainer.state.best_model_checkpoint,
    }
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ThroughputCallback):
            stats = callback.stats()
            summary.update({k: stats[k] for k in ("tokens_per_s", "peak_memory_mb", "mfu")})
    return summary


def save_adapter(trainer, path: str | Path) -> Path:
    """Save the LoRA adapter and tokenizer to ``path``; check the adapter files are there."""
    path = Path(path)
    trainer.model.save_pretrained(path)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(path)
    missing = [name for name in ADAPTER_FILES if not (path / name).exists()]
    if missing:
        raise FileNotFoundError(f"{path} lacks {missing}: was the model trained with a LoRA?")
    return path


def _logits(model, tokenizer, prompts: Sequence[str]):
    """Last-layer logits for a batch of prompts, padded, in float32 on CPU."""
    import torch

    # the prompts are chat-templated text, which already holds any BOS the model wants
    batch = tokenizer(
        list(prompts), return_tensors="pt", padding=True, add_special_tokens=False
    ).to(model.device)
    with torch.no_grad():
        return model(**batch).logits.float().cpu(), batch["attention_mask"].bool().cpu()


def reload_check(
    base_model,
    adapter_path: str | Path,
    tokenizer,
    prompts: Sequence[str],
    trained_model=None,
    atol: float = 1e-4,
    copy_base: bool = True,
) -> dict:
    """Reload base + adapter with PeftModel.from_pretrained; compare logits; raise on a mismatch.

    ``base_model`` is a path (loaded in float32 on CPU) or a model, deep-copied unless
    ``copy_base=False`` (peft edits it in place; for QLoRA pass a freshly loaded 4-bit base
    with ``copy_base=False``). The reloaded logits must equal ``trained_model``'s within
    ``atol`` (1e-4 suits float32; use ~1e-2 for 16-bit GPU models) and differ from the base
    model's, which shows the adapter changes outputs.
    """
    import copy

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_path = Path(adapter_path)
    missing = [name for name in ADAPTER_FILES if not (adapter_path / name).exists()]
    if missing:
        raise FileNotFoundError(f"{adapter_path} lacks {missing}; save with save_adapter().")
    if isinstance(base_model, (str, Path)):
        base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    else:
        base = copy.deepcopy(base_model) if copy_base else base_model
    reloaded = PeftModel.from_pretrained(base, adapter_path).eval()
    models = (reloaded,) if trained_model is None else (reloaded, trained_model)
    with bnb_generic_path(*models):  # the same 4-bit CPU kernel on both sides (helpers.cpu)
        return _compare_reloaded(reloaded, adapter_path, tokenizer, prompts, trained_model, atol)


def _compare_reloaded(reloaded, adapter_path: Path, tokenizer, prompts, trained_model, atol):
    """reload_check's comparisons: the adapter changes the base, and equals the trained one."""
    logits, keep = _logits(reloaded, tokenizer, prompts)
    with reloaded.disable_adapter():
        base_logits, _ = _logits(reloaded, tokenizer, prompts)
    report = {
        "files": sorted(p.name for p in adapter_path.iterdir()),
        "max_diff_vs_base": (logits - base_logits)[keep].abs().max().item(),
    }
    if report["max_diff_vs_base"] <= atol:
        raise AssertionError("The adapter does not change the logits: was it trained at all?")
    if trained_model is not None:
        was_training = trained_model.training
        trained_model.eval()
        trained, _ = _logits(trained_model, tokenizer, prompts)
        trained_model.train(was_training)
        report["max_diff_vs_trained"] = (logits - trained)[keep].abs().max().item()
        if report["max_diff_vs_trained"] > atol:
            raise AssertionError(
                f"Reloaded logits differ from the trained model's by "
                f"{report['max_diff_vs_trained']:.2e} > atol={atol}: the saved adapter is not "
                "the trained one (saved before training ended, or a different base model?)."
            )
    return report


# ---------------------------------------------------------------------------- data


def _cleaned_or_shipped(split: str) -> tuple[list[dict], str]:
    """Notebook 01's cleaned split when it exists, else the split shipped in data/main/."""
    from helpers.course import outputs_dir
    from helpers.data import load_split, read_jsonl

    cleaned = outputs_dir() / "data" / f"{split}.jsonl"
    if cleaned.exists():
        return read_jsonl(cleaned), str(cleaned)
    return load_split(split), f"data/main/{split}.jsonl (run notebook 01 to use your own)"


def training_rows(
    profile: Profile, seed: int = 0, replay_share: float = 0.0
) -> tuple[list[dict], str]:
    """The SFT mix: main-task rows (profile.train_samples of them) + self-cognition, shuffled.

    ``replay_share`` > 0 mixes general question-answer rows (:func:`replay_rows`) back in,
    as that share of the final mix (repeated when the mix needs more than exist); the number
    of training steps stays the same, so they replace task rows seen per step.
    Returns the rows (``{"messages": ...}`` only) and where the main-task rows came from.
    """
    import random

    from helpers.data import load_self_cognition

    if not 0 <= replay_share < 1:
        raise ValueError(f"replay_share must be in [0, 1); got {replay_share}")
    main, source = _cleaned_or_shipped("train")
    rng = random.Random(seed)
    if profile.train_samples is not None and profile.train_samples < len(main):
        main = rng.sample(main, profile.train_samples)
    cognition = [r for r in load_self_cognition() if r["meta"]["split"] == "train"]
    rows = [{"messages": profile.style_messages(r["messages"])} for r in main + cognition]
    if replay_share:
        general = replay_rows()
        rng.shuffle(general)  # every category in any prefix
        wanted = round(replay_share * len(rows) / (1 - replay_share))
        picked = [general[i % len(general)] for i in range(wanted)]  # cycle when too few
        rows += [{"messages": r["messages"]} for r in picked]  # no task system prompt
        source += f" + {wanted} general replay rows ({replay_share:.0%})"
    rng.shuffle(rows)
    return rows, source


def replay_rows(held_out: bool = False) -> list[dict]:
    """``data/general_replay.jsonl`` for replay training; every 8th row is held out instead.

    The held-out rows (``held_out=True``, 15 of 120) are never trained on, so 04 can watch the
    loss on general questions during a replay run without reading its own training data.
    """
    from helpers.data import load_replay

    return [r for i, r in enumerate(load_replay()) if (i % 8 == 7) == held_out]


def validation_rows(profile: Profile, n: int) -> list[dict]:
    """The first ``n`` validation rows, styled like the training rows (for the eval loss)."""
    rows, _ = _cleaned_or_shipped("val")
    return [{"messages": profile.style_messages(r["messages"])} for r in rows[:n]]
