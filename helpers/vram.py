"""VRAM estimator for fine-tuning: model shape + training plan -> a per-component breakdown.

The estimate is meant to be checked against a GPU later, so it keeps two totals apart:
``allocated_bytes`` (tensors only, comparable with ``torch.cuda.max_memory_allocated()``) and
``total_bytes`` (adds allocator fragmentation and the CUDA context, comparable with nvidia-smi).
All components are summed as if they peaked together: a slight upper bound on the true peak.

Assumptions and constants (bytes; 1 GB here = 2**30 bytes, as nvidia-smi/torch report it):

* Weights: lora -> every parameter in ``dtype`` (2 B for fp16/bf16, 4 B for fp32). qlora ->
  the q/k/v/o/gate/up/down weight matrices in NF4 with double quantisation,
  4 + 8/64 + 32/(64*256) ≈ 4.127 bits/param (QLoRA paper, Dettmers et al. 2023); embeddings,
  lm_head, norms and biases stay in ``dtype`` (TRL's SFTTrainer no longer calls peft's
  ``prepare_model_for_kbit_training``, which would upcast them to fp32). full -> mixed precision:
  fp32 master weights (4 B) + the 16-bit copies autocast saves for backward (2 B), fp32
  gradients (4 B) and AdamW states (8 B): 18 B/param (the classic figure, without the autocast
  copies, is 16 B/param).
* LoRA adapters: r*(in+out) params per adapted linear per layer, kept in fp32 (peft's
  ``autocast_adapter_dtype``), fp32 gradients (4 B/param).
* Optimizer: AdamW keeps two fp32 moments, 8 B/param; bitsandbytes 8-bit AdamW 2 B/param
  (its fp32 fallback for tensors < 4096 elements is ignored); "paged" states are counted on GPU.
* Activations, per token per layer, after Korthikanti et al. 2022 "Reducing Activation
  Recomputation in Large Transformer Models" (their 34*h + 5*a*s bytes for GPT with dropout),
  re-derived for a Llama/Qwen block with no dropout, RMSNorm, GQA and SwiGLU; ``a`` = dtype bytes:
  each RMSNorm keeps its fp32 input (4*d); q/k/v input a*d; q, k, v for attention
  a*(h*hd + 2*kv*hd); attention output a*h*hd; SDPA log-sum-exp 4*h; MLP input a*d;
  gate, up, silu(gate), product a*4*I. eager attention adds h*s*(4 + a) (fp32 softmax output and
  its 16-bit copy). Each LoRA module adds a*(in + r), plus a 1-byte dropout mask per input
  element when lora_dropout > 0. With gradient checkpointing only each layer's input (a*d) is
  kept, plus one layer's full activations during recompute.
* LM head and loss ("logits" row): TRL 1.16's SFTTrainer fuses them (``add_fused_lm_head``), so
  the (batch, seq, vocab) logits never exist. On CUDA it projects only the N positions that carry
  a label, N = label_share * batch * seq_len (``LABEL_SHARE`` = 0.2 by default: the course's chat
  data on the GPU profiles, system prompt kept, is about 18-20 % answer tokens;
  ``helpers.sft.dataset_label_share`` measures a prepared dataset), through one reused buffer of
  min(N, 4096) x 32768 in the compute dtype (TRL's token and vocabulary tile sizes; 32768 columns
  even for a smaller vocabulary). Its peak is the backward, which recomputes each tile: the
  buffer, the label rows of the final hidden state saved in forward (a*d), their fp32 gradient
  accumulator and its cast back to dtype ((4 + a)*d), and per label an int64 target and fp32
  log-normaliser, entropy and incoming gradient (20 B); per-position outputs (~14 B) are left
  out. Full fine-tuning adds the 16-bit copy of a 32768-row slice of the fp32 head (32768*a*d);
  the fp32 head-weight gradient it accumulates is the one counted under gradients. On CPU TRL
  projects every position (``from_profile`` sets label_share = 1.0 there) and its torch fallback
  adds a few fp32 temporaries of one tile, which are not modelled.
* CUDA context ≈ 0.75 GB (CUDA runtime + cuBLAS/cuDNN kernels; varies 0.3-1 GB by GPU/driver)
  and fragmentation = 10 % of allocated (reserved minus allocated in PyTorch's caching allocator).
  bitsandbytes' transient dequantised weight (one matrix) and the autocast cache are left to it.

Example::

    >>> from helpers.vram import KNOWN_SHAPES, USABLE_VRAM_GB, TrainingPlan, estimate_vram
    >>> plan = TrainingPlan("qlora", seq_len=1024, batch_size=4, gradient_checkpointing=True,
    ...                     optimizer="paged_adamw_8bit", dtype="float16")
    >>> est = estimate_vram(KNOWN_SHAPES["Qwen/Qwen2.5-1.5B-Instruct"], plan)
    >>> est.fits(USABLE_VRAM_GB["t4"])
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

GB = 1024**3  # bytes; nvidia-smi's "MiB" and torch both count in powers of two
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # ≈ 4.127 bits/param, NF4 + double quant
FP32 = 4  # bytes: LoRA adapters, their grads, RMSNorm inputs, LM-head accumulators
USABLE_VRAM_GB = {"t4": 15.0, "24g": 24.0}  # nvidia-smi's total: 15360 MiB T4, 24576 MiB 3090/4090
LABEL_SHARE = 0.2  # positions with a label in the course's GPU-profile batches (18-20 %)
HEAD_TOKEN_TILE = 4096  # TRL 1.16 fused LM head: tokens per projection tile (TOKEN_CHUNK_SIZE)
HEAD_VOCAB_TILE = 32768  # ... and vocabulary columns per tile (_CHUNKED_LOGPROB_CHUNK_SIZE)
HEAD_BYTES_PER_LABEL = 8 + 3 * FP32  # int64 target; fp32 log-normaliser, entropy, grad of log-prob
OPTIMIZER_BYTES_PER_PARAM = {  # state bytes per trainable parameter
    "adamw_torch": 8,
    "adamw_torch_fused": 8,
    "adamw_hf": 8,
    "paged_adamw_32bit": 8,
    "adamw_8bit": 2,
    "adamw_bnb_8bit": 2,
    "paged_adamw_8bit": 2,
    "sgd": 0,
}
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = ("full", "lora", "qlora")
ATTENTIONS = ("sdpa", "eager")


def _get(config: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dict or a config object, None-valued entries counting as missing."""
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    return default if value is None else value


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only (Llama/Qwen2/Gemma3-style) model that drive memory."""

    name: str
    hidden_size: int  # d
    num_layers: int  # L
    num_heads: int  # h
    num_kv_heads: int  # kv (GQA)
    head_dim: int  # hd
    intermediate_size: int  # I (SwiGLU)
    vocab_size: int  # V
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v bias (Qwen2)
    norms_per_layer: int = 2  # Gemma3: 4 (input, post_attn, pre_ffw, post_ffw)
    qk_norm: bool = False  # Gemma3/Qwen3: RMSNorm of head_dim on q and k

    def qwen2_config(self, **overrides: Any):  # -> transformers.Qwen2Config
        """A Qwen2Config of this shape, for random-weight benchmark models; ``overrides`` win."""
        from transformers import Qwen2Config

        return Qwen2Config(
            **{
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads,
                "num_key_value_heads": self.num_kv_heads,
                "tie_word_embeddings": self.tie_word_embeddings,
                "max_position_embeddings": 32768,  # Qwen2.5's config.json
                "bos_token_id": None,
                **overrides,
            }
        )

    @classmethod
    def from_config(cls, config: Any, name: str | None = None) -> ModelShape:
        """Build from a transformers PretrainedConfig or a config.json dict (nested text_config)."""
        outer = config
        text = _get(config, "text_config")
        if text is not None:
            config = text
        model_type = str(_get(config, "model_type", _get(outer, "model_type", "")))
        heads = int(_get(config, "num_attention_heads"))
        hidden = int(_get(config, "hidden_size"))
        is_gemma3 = model_type.startswith("gemma3")
        return cls(
            name=name or _get(outer, "_name_or_path") or _get(outer, "name_or_path") or model_type,
            hidden_size=hidden,
            num_layers=int(_get(config, "num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(_get(config, "num_key_value_heads", heads)),
            head_dim=int(_get(config, "head_dim", hidden // heads)),
            intermediate_size=int(_get(config, "intermediate_size")),
            vocab_size=int(_get(config, "vocab_size")),
            tie_word_embeddings=bool(
                _get(outer, "tie_word_embeddings", _get(config, "tie_word_embeddings", True))
            ),
            attention_bias=model_type == "qwen2" or bool(_get(config, "attention_bias", False)),
            norms_per_layer=4 if is_gemma3 else 2,
            qk_norm=is_gemma3 or model_type.startswith("qwen3"),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder block."""
        d, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {
            "q_proj": (d, q),
            "k_proj": (d, kv),
            "v_proj": (d, kv),
            "o_proj": (q, d),
            "gate_proj": (d, i),
            "up_proj": (d, i),
            "down_proj": (i, d),
        }

    def param_counts(self) -> dict[str, int]:
        """Parameter counts: embedding, per-layer attention and mlp, all norms, lm_head, total."""
        lin = self.linear_shapes()
        sizes = {name: n_in * n_out for name, (n_in, n_out) in lin.items()}
        attention = sum(sizes[n] for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        if self.attention_bias:  # biases on q, k, v only
            attention += lin["q_proj"][1] + lin["k_proj"][1] + lin["v_proj"][1]
        mlp = sizes["gate_proj"] + sizes["up_proj"] + sizes["down_proj"]
        per_layer_norms = self.norms_per_layer * self.hidden_size + 2 * self.head_dim * self.qk_norm
        norms = self.num_layers * per_layer_norms + self.hidden_size  # + final norm
        embedding = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tie_word_embeddings else embedding
        total = embedding + self.num_layers * (attention + mlp) + norms + lm_head
        return {
            "embedding": embedding,
            "attention_per_layer": attention,
            "mlp_per_layer": mlp,
            "norms": norms,
            "lm_head": lm_head,
            "total": total,
        }


def _qwen25(
    name: str, d: int, layers: int, heads: int, kv: int, inter: int, vocab: int, tied: bool
):
    return ModelShape(name, d, layers, heads, kv, d // heads, inter, vocab, tied, True)


KNOWN_SHAPES: dict[str, ModelShape] = {  # values from each model's config.json on the hub
    s.name: s
    for s in (
        _qwen25("Qwen/Qwen2.5-0.5B-Instruct", 896, 24, 14, 2, 4864, 151936, True),
        _qwen25("Qwen/Qwen2.5-1.5B-Instruct", 1536, 28, 12, 2, 8960, 151936, True),
        _qwen25("Qwen/Qwen2.5-3B-Instruct", 2048, 36, 16, 2, 11008, 151936, True),
        _qwen25("Qwen/Qwen2.5-7B-Instruct", 3584, 28, 28, 4, 18944, 152064, False),
        _qwen25("Qwen/Qwen2.5-14B-Instruct", 5120, 48, 40, 8, 13824, 152064, False),
        _qwen25("Qwen/Qwen2.5-32B-Instruct", 5120, 64, 40, 8, 27648, 152064, False),
        _qwen25("Qwen/Qwen2.5-72B-Instruct", 8192, 80, 64, 8, 29568, 152064, False),
        ModelShape("google/gemma-3-270m", 640, 18, 4, 1, 256, 2048, 262144, True, False, 4, True),
    )
}


@dataclass(frozen=True)
class TrainingPlan:
    """What is trained and how: method, tokens per step, precision, optimizer, LoRA settings."""

    method: str  # "full" | "lora" | "qlora"
    seq_len: int  # tokens per sample (padded/packed length)
    batch_size: int  # samples per device per micro-step
    gradient_checkpointing: bool = False
    optimizer: str = "adamw_torch"  # a transformers `optim` name
    dtype: str = "bfloat16"  # compute dtype
    lora_r: int = 16
    target_modules: str | tuple[str, ...] = "all-linear"
    attention: str = "sdpa"  # "sdpa"/flash: no s*s scores kept; "eager": scores kept
    lora_dropout: float = 0.0
    label_share: float = LABEL_SHARE  # share of positions with a label; 1.0 = every position

    def __post_init__(self) -> None:
        if not isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        tm, known = self.target_modules, ", ".join(OPTIMIZER_BYTES_PER_PARAM)
        modules_ok = tm == "all-linear" or (bool(tm) and set(tm) <= set(LINEAR_NAMES))
        for ok, message in [
            (self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}"),
            (self.seq_len > 0, f"seq_len must be > 0, got {self.seq_len}"),
            (self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}"),
            (
                self.optimizer in OPTIMIZER_BYTES_PER_PARAM,
                f"unknown optimizer {self.optimizer!r}; known: {known}",
            ),
            (self.dtype in DTYPE_BYTES, f"dtype must be one of {tuple(DTYPE_BYTES)}"),
            (self.attention in ATTENTIONS, f"attention must be one of {ATTENTIONS}"),
            (self.method == "full" or self.lora_r > 0, f"lora_r must be > 0, got {self.lora_r}"),
            (0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)"),
            (
                0.0 < self.label_share <= 1.0,
                f"label_share must be in (0, 1], got {self.label_share}",
            ),
            (
                modules_ok,
                f"target_modules must be 'all-linear' or names from {LINEAR_NAMES}, got {tm!r}",
            ),
        ]:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_profile(cls, profile: Any) -> TrainingPlan:
        """The plan a helpers.profiles.Profile trains with (TRL projects every position on CPU)."""
        return cls(
            method=profile.method,
            seq_len=profile.max_length,
            batch_size=profile.per_device_batch_size,
            gradient_checkpointing=profile.gradient_checkpointing,
            optimizer=profile.optimizer,
            dtype=profile.dtype,
            lora_r=profile.lora_r,
            target_modules=profile.target_modules,
            lora_dropout=getattr(profile, "lora_dropout", 0.0),
            label_share=LABEL_SHARE if getattr(profile, "device", "cuda") == "cuda" else 1.0,
        )

    def adapted_modules(self) -> tuple[str, ...]:
        """Linear layers that get a LoRA adapter (none for full fine-tuning)."""
        if self.method == "full":
            return ()
        return LINEAR_NAMES if self.target_modules == "all-linear" else self.target_modules


def _row(component: str, nbytes: int, explanation: str) -> dict[str, Any]:
    return {"component": component, "bytes": nbytes, "GB": nbytes / GB, "explanation": explanation}


EXPLANATIONS = {
    "weights": "Base model weights (16-bit; NF4 linears for QLoRA; fp32 master + 16-bit for full)",
    "adapter_weights": "LoRA A/B matrices in fp32",
    "gradients": "Gradients of the trainable parameters, fp32",
    "optimizer_states": "Optimizer state (AdamW: 2 fp32 moments = 8 B/param; 8-bit: 2 B/param)",
    "activations": "Tensors saved for backward (Korthikanti et al. 2022, adapted to GQA/SwiGLU)",
    "logits": "Fused LM head + loss (TRL): one <=4096 x 32768 logits tile, label positions only",
    "fragmentation": "PyTorch caching-allocator reserve not handed out (reserved - allocated)",
    "cuda_context": "CUDA runtime and kernels (not in max_memory_allocated, seen by nvidia-smi)",
}


@dataclass(frozen=True)
class VramEstimate:
    """Estimated peak GPU memory of one training step, in bytes per component."""

    shape: ModelShape
    plan: TrainingPlan
    trainable_params: int  # count, not bytes
    weights: int
    adapter_weights: int
    gradients: int
    optimizer_states: int
    activations: int
    logits: int
    fragmentation: int
    cuda_context: int

    @property
    def allocated_bytes(self) -> int:
        """Tensor memory: compare with torch.cuda.max_memory_allocated()."""
        return sum(getattr(self, k) for k in list(EXPLANATIONS)[:6])

    @property
    def reserved_bytes(self) -> int:
        """Allocated plus fragmentation: compare with torch.cuda.max_memory_reserved()."""
        return self.allocated_bytes + self.fragmentation

    @property
    def total_bytes(self) -> int:
        """Everything, CUDA context included: compare with nvidia-smi's used memory."""
        return self.reserved_bytes + self.cuda_context

    @property
    def total_gb(self) -> float:
        """total_bytes in GB (2**30 bytes)."""
        return self.total_bytes / GB

    def fits(self, vram_gb: float) -> bool:
        """True when the total fits a GPU with ``vram_gb`` GB (nvidia-smi's total / 1024)."""
        return self.total_bytes <= vram_gb * GB

    def rows(self) -> list[dict[str, Any]]:
        """One dict per component: component, bytes, GB, explanation."""
        return [_row(k, getattr(self, k), e) for k, e in EXPLANATIONS.items()]

    def to_frame(self):  # -> pandas.DataFrame
        """The breakdown as a DataFrame (component, GB, explanation) with the two totals."""
        import pandas as pd

        rows = self.rows() + [
            _row("allocated", self.allocated_bytes, "Sum of tensors: ~ max_memory_allocated"),
            _row("total", self.total_bytes, "Allocated + fragmentation + context: ~ nvidia-smi"),
        ]
        return pd.DataFrame(rows)[["component", "GB", "explanation"]].round({"GB": 3})

    def compare_with_measured(self, measured_peak_allocated_bytes: int) -> dict[str, float]:
        """Estimate vs a measured torch.cuda.max_memory_allocated(): ratio and difference."""
        if measured_peak_allocated_bytes <= 0:
            raise ValueError("measured_peak_allocated_bytes must be > 0 (bytes, not GB)")
        diff = self.allocated_bytes - measured_peak_allocated_bytes
        return {
            "estimated_gb": self.allocated_bytes / GB,
            "measured_gb": measured_peak_allocated_bytes / GB,
            "difference_gb": diff / GB,  # > 0: the estimate is conservative
            "ratio": self.allocated_bytes / measured_peak_allocated_bytes,
        }


def _activations_per_token_layer(shape: ModelShape, plan: TrainingPlan) -> int:
    """Bytes one decoder layer saves for backward per token (no checkpointing)."""
    a = DTYPE_BYTES[plan.dtype]
    d, i, h = shape.hidden_size, shape.intermediate_size, shape.num_heads
    q, kv = h * shape.head_dim, shape.num_kv_heads * shape.head_dim
    total = shape.norms_per_layer * FP32 * d  # each RMSNorm keeps its fp32 input
    total += a * d + a * (q + 2 * kv) + a * q + FP32 * h  # qkv input, q/k/v, attn out, lse
    total += FP32 * (q + kv) * shape.qk_norm  # q_norm / k_norm inputs
    total += a * d + 4 * a * i  # mlp input; gate, up, silu(gate), gate*up
    if plan.attention == "eager":
        total += h * plan.seq_len * (FP32 + a)  # fp32 softmax output + its 16-bit copy
    lin = shape.linear_shapes()
    for name in plan.adapted_modules():  # LoRA: 16-bit input copy + r-dim A output (+ mask)
        n_in = lin[name][0]
        total += a * (n_in + plan.lora_r) + (n_in if plan.lora_dropout > 0 else 0)
    return total


def _lm_head_bytes(shape: ModelShape, plan: TrainingPlan) -> int:
    """Peak bytes of TRL's fused LM head and loss (its backward) for one micro-batch."""
    a, d = DTYPE_BYTES[plan.dtype], shape.hidden_size
    labels = max(1, round(plan.batch_size * plan.seq_len * plan.label_share))  # rows projected
    tile = min(labels, HEAD_TOKEN_TILE) * HEAD_VOCAB_TILE * a  # (<=4096, 32768) logits buffer
    per_label = a * d + (FP32 + a) * d + HEAD_BYTES_PER_LABEL  # saved hidden, its grad, vectors
    weight_cast = HEAD_VOCAB_TILE * d * a if plan.method == "full" and a < FP32 else 0
    return tile + labels * per_label + weight_cast


def estimate_vram(
    shape: ModelShape,
    plan: TrainingPlan,
    *,
    cuda_context_gb: float = 0.75,
    fragmentation: float = 0.10,
) -> VramEstimate:
    """Estimate the peak VRAM of one training micro-step of ``plan`` on a model of ``shape``."""
    if cuda_context_gb < 0 or fragmentation < 0:
        raise ValueError("cuda_context_gb and fragmentation must be >= 0")
    a = DTYPE_BYTES[plan.dtype]
    n_params, lin = shape.param_counts()["total"], shape.linear_shapes()
    tokens = plan.batch_size * plan.seq_len
    if plan.method == "full":
        trainable, adapter = n_params, 0
        weights = n_params * (FP32 + (a if a < FP32 else 0))  # fp32 master + autocast copies
    else:  # r*(in+out) per adapted module per layer
        trainable = shape.num_layers * sum(
            plan.lora_r * sum(lin[m]) for m in plan.adapted_modules()
        )
        adapter = trainable * FP32
        weights = n_params * a
        if plan.method == "qlora":  # the linear weight matrices in NF4, the rest in dtype
            n_quant = shape.num_layers * sum(i * o for i, o in lin.values())
            weights = round(n_quant * NF4_DQ_BITS / 8) + (n_params - n_quant) * a
    per_layer = _activations_per_token_layer(shape, plan)
    if plan.gradient_checkpointing:  # layer inputs + one layer recomputed in backward
        layers = shape.num_layers * a * shape.hidden_size + per_layer
    else:
        layers = shape.num_layers * per_layer
    parts = {
        "weights": weights,
        "adapter_weights": adapter,
        "gradients": trainable * FP32,
        "optimizer_states": trainable * OPTIMIZER_BYTES_PER_PARAM[plan.optimizer],
        "activations": tokens * (layers + (FP32 + a) * shape.hidden_size),  # + final norm
        "logits": _lm_head_bytes(shape, plan),
    }
    return VramEstimate(
        shape=shape,
        plan=plan,
        trainable_params=trainable,
        fragmentation=round(sum(parts.values()) * fragmentation),
        cuda_context=round(cuda_context_gb * GB),
        **parts,
    )


def estimate_for_profile(
    profile: Any, shape: ModelShape | None = None, **kwargs: Any
) -> VramEstimate:
    """Estimate for a helpers.profiles.Profile; ``shape`` defaults to KNOWN_SHAPES[model_id]."""
    if shape is None:
        if profile.model_id not in KNOWN_SHAPES:
            raise KeyError(
                f"No known shape for {profile.model_id!r} (known: {', '.join(KNOWN_SHAPES)}). "
                "Pass shape=ModelShape.from_config(AutoConfig.from_pretrained(...)) "
                "or ModelShape.from_config(model.config)."
            )
        shape = KNOWN_SHAPES[profile.model_id]
    return estimate_vram(shape, TrainingPlan.from_profile(profile), **kwargs)


def plot_breakdown(estimates: dict[str, VramEstimate], vram_gb: float | None = None, ax=None):
    """Horizontal stacked bars (GB per component) per plan; a vertical line at ``vram_gb``."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.6 * len(estimates) + 1.8))
    labels = list(estimates)
    left = [0.0] * len(labels)
    colors = plt.get_cmap("tab10").colors
    for component, color in zip(EXPLANATIONS, colors, strict=False):
        widths = [getattr(estimates[label], component) / GB for label in labels]
        ax.barh(labels, widths, left=left, color=color, label=component)
        left = [x + w for x, w in zip(left, widths, strict=True)]
    if vram_gb is not None:
        ax.axvline(vram_gb, color="black", linestyle="--", label=f"GPU VRAM {vram_gb:g} GB")
    ax.set_xlabel("GB (2**30 bytes)")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")  # outside the bars
    return ax


# ---------------------------------------------------------------------------- N devices

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
OFFLOADABLE = ("zero2", "zero3", "fsdp")  # DeepSpeed offload_optimizer / FSDP offload_params


def _layer_weight_bytes(est: VramEstimate) -> tuple[int, int]:
    """(bytes of one decoder layer's weights, bytes of the embedding) as ``est`` stores them."""
    counts, a = est.shape.param_counts(), DTYPE_BYTES[est.plan.dtype]
    embedding = counts["embedding"] * a
    outside = (counts["embedding"] + counts["lm_head"] + est.shape.hidden_size) * a
    return round((est.weights - outside) / est.shape.num_layers), embedding


def estimate_sharded(
    shape: ModelShape,
    plan: TrainingPlan,
    strategy: str = "ddp",
    n_devices: int = 1,
    offload: bool = False,
    **kwargs: Any,
) -> VramEstimate:
    """Peak memory of ONE device when ``n_devices`` train together with ``strategy``.

    Starts from :func:`estimate_vram` (one device, everything resident) and divides what the
    strategy shards: ddp nothing (every device holds everything); zero1 the optimizer states;
    zero2 also the gradients; zero3 and fsdp (FSDP2 full shard) also the weights and adapters,
    plus two layers gathered whole (the one computing and the one prefetched; the embedding
    when it is larger). ``offload`` moves the optimizer states (zero2) and also the weight
    shards (zero3, fsdp) to CPU RAM. Activations and logits stay: each device runs its own
    micro-batch (sequence parallelism is what splits those).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    if offload and strategy not in OFFLOADABLE:
        raise ValueError(f"offload needs one of {OFFLOADABLE} (ddp/zero1 keep all on the GPU)")
    est = estimate_vram(shape, plan, **kwargs)
    n, parts = n_devices, {}
    if strategy != "ddp":
        parts["optimizer_states"] = 0 if offload else -(-est.optimizer_states // n)
    if strategy in ("zero2", "zero3", "fsdp"):
        parts["gradients"] = -(-est.gradients // n)
    if strategy in ("zero3", "fsdp"):
        layer, embedding = _layer_weight_bytes(est)
        gathered = 2 * max(layer, embedding) if n > 1 or offload else 0
        parts["weights"] = (0 if offload else -(-est.weights // n)) + gathered
        parts["adapter_weights"] = -(-est.adapter_weights // n)
    fields = {k: parts.get(k, getattr(est, k)) for k in list(EXPLANATIONS)[:6]}
    fraction = est.fragmentation / max(1, est.allocated_bytes)  # the same share of allocated
    return replace(est, fragmentation=round(sum(fields.values()) * fraction), **fields)


def multi_device_table(
    shapes: Mapping[str, ModelShape],
    plan_for: Mapping[str, TrainingPlan],
    devices: tuple[int, ...] = (1, 2, 4, 8),
    vram_gb: float = 24.0,
    strategies: tuple[tuple[str, bool], ...] = (
        ("ddp", False),
        ("zero2", False),
        ("zero3", False),
        ("zero3", True),
    ),
):  # -> pandas.DataFrame
    """GB per device for each model x method x device count x (strategy, offload); fits marked.

    One row per (model, method, devices); one column per strategy ("zero3+offload" for
    offload), plus ``fastest fit``: the first strategy in ``strategies`` order that fits
    ``vram_gb`` (the order is from least to most communication).
    """
    import pandas as pd

    rows = []
    for label, shape in shapes.items():
        for method, plan in plan_for.items():
            for n in devices:
                row: dict[str, Any] = {"model": label, "method": method, "GPUs": n}
                best = None
                for strategy, offload in strategies:
                    name = strategy + ("+offload" if offload else "")
                    est = estimate_sharded(shape, plan, strategy, n, offload)
                    row[name] = round(est.total_gb, 1)
                    if best is None and est.fits(vram_gb):
                        best = name
                row["fastest fit"] = best or "does not fit"
                rows.append(row)
    return pd.DataFrame(rows)
