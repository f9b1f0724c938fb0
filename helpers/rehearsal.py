"""Rehearse the GPU profiles on a CPU: t4 and 24g logic, tiny weights, a sandboxed platform.

Most learners run ``t4`` (Colab) or ``24g`` (AutoDL), which CI cannot: it has no GPU and no hub.
A rehearsal runs the notebooks with that profile's own logic (4-bit NF4 QLoRA through
bitsandbytes' CPU backend, its precision decisions, hub choice and cache lookup, output
locations, disk checks) on a tiny random Qwen2 laid out exactly like a hub download, with
Qwen2.5's real chat template (as TRL ships it), Qwen's special tokens, pad != eos and Qwen's
sampling defaults in ``generation_config.json``.

Only what a CPU cannot do is changed, here and nowhere else (:func:`rehearse`): CUDA becomes the
CPU, fp16 autocast becomes float32 (CPU autocast has no fp16 GradScaler; bf16 autocast does run
on CPU, so 24g keeps it), the paged 8-bit optimizer becomes AdamW; step and row counts shrink.
Each change is listed in ``profile.substitutions``, which every parameters cell shows.

The platform lives in a sandbox folder (``COURSE_REHEARSAL_ROOT``): Colab's Drive and AutoDL's
data disk are folders in it (:func:`platform_path`), and ``COURSE_REHEARSAL_DISKS`` gives them
quotas (:func:`disk_usage`), so a disk check can be made to fire.

    >>> from helpers import rehearsal
    >>> env = rehearsal.prepare("24g", Path("/tmp/rehearsal"))  # sandbox, quotas, hub snapshot
    >>> # run notebooks with os.environ.update(env): each sees an AutoDL box with a 4090
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from importlib import resources
from pathlib import Path

from helpers.profiles import REHEARSAL_ENV_VAR, Profile, get_profile

ROOT_ENV_VAR = "COURSE_REHEARSAL_ROOT"
DISKS_ENV_VAR = "COURSE_REHEARSAL_DISKS"
GB = 1000**3
# Where each rehearsal stands: the platform, its hub's cache layout, its disks in GB (AutoDL's
# defaults: a 30 GB system disk and a 50 GB data disk; Colab's local disk is ~100 GB).
REHEARSED_ON = {
    "t4": {"platform": "colab", "layout": "hf", "disks": {"/": 100}},
    "24g": {
        "platform": "autodl",
        "layout": "modelscope",
        "disks": {"/": 30, "/root/autodl-tmp": 50},
    },
}
# Sizes only: a CPU runs the same steps, just fewer of them.
SIZES = {
    "max_steps": 4,
    "gradient_accumulation_steps": 2,  # still accumulates, over fewer micro-batches
    "train_samples": 48,
    "eval_rows": 6,
    "compare_rows": 4,
    "max_new_tokens": 16,
}
# Qwen2.5-Instruct's generation_config.json sampling defaults (repetition_penalty: 1.05 on 7B).
QWEN_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20}
QWEN_REPETITION_PENALTY = {"t4": 1.1, "24g": 1.05}
QWEN_TIED_EMBEDDINGS = {"t4": True, "24g": False}  # Qwen2.5-1.5B ties lm_head; 7B does not


def rehearse(profile: Profile) -> Profile:
    """The profile with what a CPU cannot do substituted, each change named in ``substitutions``."""
    if profile.device != "cuda":
        raise ValueError(f"Only GPU profiles are rehearsed; {profile.name!r} already runs on CPU.")
    changes = [("device", "cpu", "no CUDA device here")]
    if profile.dtype == "float16":
        changes.append(("dtype", "float32", "CPU autocast has no fp16 with a GradScaler"))
    if profile.optimizer.startswith("paged_"):
        changes.append(("optimizer", "adamw_torch", "paged optimizers need CUDA unified memory"))
    changes += [(name, value, "size only: the same steps, fewer") for name, value in SIZES.items()]
    changes.append(("learning_rate", 2e-3, "4 steps: a larger step, so the loss visibly falls"))
    subs = tuple((f, str(getattr(profile, f)), str(v), why) for f, v, why in changes)
    return dataclasses.replace(profile, **{f: v for f, v, _ in changes}, substitutions=subs)


# ---------------------------------------------------------------------------- the platform


def platform_path(path: str) -> Path:
    """A platform's fixed absolute path (e.g. /root/autodl-tmp), inside the sandbox if any."""
    root = os.environ.get(ROOT_ENV_VAR, "").strip()
    return Path(root) / path.lstrip("/") if root else Path(path)


def _quotas() -> dict[Path, int]:
    """Sandbox folder -> quota in bytes, from ``COURSE_REHEARSAL_DISKS`` ('/=30,/root/x=50')."""
    spec = os.environ.get(DISKS_ENV_VAR, "").strip()
    pairs = (item.split("=") for item in spec.split(",") if item.strip())
    return {platform_path(p.strip()): int(float(gb) * GB) for p, gb in pairs}


def _bytes_under(folder: Path, skip: set[Path]) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        total += sum(os.lstat(Path(dirpath, f)).st_size for f in filenames)
    return total


def disk_usage(path: str | os.PathLike):
    """``shutil.disk_usage``, except for sandbox folders with a quota: (total, used, free)."""
    quotas = _quotas()
    where = Path(path).absolute()
    disks = [d for d in quotas if where == d or d in where.parents]
    if not disks:
        return shutil.disk_usage(where)
    disk = max(disks, key=lambda d: len(d.parts))  # the innermost disk holding ``path``
    used = _bytes_under(disk, skip={d for d in quotas if d != disk})
    total = quotas[disk]
    return shutil._ntuple_diskusage(total, used, max(total - used, 0))


# ---------------------------------------------------------------------------- the model


def qwen_chat_template() -> str:
    """Qwen2.5's chat template, the copy TRL ships and patches for training."""
    return (resources.files("trl") / "chat_templates" / "qwen2_5.jinja").read_text()


def build_qwen_like(profile: Profile, out: Path) -> Path:
    """A tiny random Qwen2 with Qwen2.5-Instruct's template, tokens and sampling defaults."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from helpers.models import TINY_CONFIG, TINY_SEED, course_texts, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(course_texts())  # <|endoftext|>, <|im_start|>, <|im_end|>
    tokenizer.chat_template = qwen_chat_template()  # no {% generation %}: as on the hub
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=pad,  # Qwen2.5's config names <|endoftext|> as BOS; the template adds none
        eos_token_id=eos,
        pad_token_id=pad,
        **{**TINY_CONFIG, "tie_word_embeddings": QWEN_TIED_EMBEDDINGS[profile.name]},
    )
    torch.manual_seed(TINY_SEED)
    model = Qwen2ForCausalLM(config)
    generation = model.generation_config
    generation.eos_token_id, generation.pad_token_id = [eos, pad], pad
    generation.repetition_penalty = QWEN_REPETITION_PENALTY[profile.name]
    for key, value in QWEN_SAMPLING.items():
        setattr(generation, key, value)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def lay_out_as_hub(model_dir: Path, profile: Profile, layout: str, cache: Path) -> Path:
    """Copy a checkpoint into a hub cache as the hub's client does: 'hf' or 'modelscope' layout.

    ``cache`` is HF_HUB_CACHE for 'hf', and ModelScope's download folder (MODELSCOPE_CACHE/models)
    for 'modelscope'.
    """
    if layout == "hf":
        repo = cache / ("models--" + profile.model_id.replace("/", "--"))
        target = repo / "snapshots" / profile.revision
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(profile.revision)
    elif layout == "modelscope":  # '.' in the name becomes '___' on disk
        owner, _, name = (profile.modelscope_id or profile.model_id).partition("/")
        target = cache / owner / name.replace(".", "___")
    else:
        raise ValueError(f"layout must be 'hf' or 'modelscope', not {layout!r}")
    shutil.copytree(model_dir, target, dirs_exist_ok=True)
    return target


def prepare(name: str, root: Path, disks: dict[str, float] | None = None) -> dict[str, str | None]:
    """Build a rehearsal of GPU profile ``name`` under ``root``; return the environment to run in.

    The sandbox holds the platform's home (on the system disk), its data disk or Drive, and the
    model in the hub cache where that platform's default hub and cache settings put it. A value
    of None in the returned environment means: unset it, the platform's defaults decide.
    """
    from helpers.env import AUTODL_DATA_DISK, COLAB_DRIVE

    where = REHEARSED_ON[name]
    profile = get_profile(name)
    home = root / "root"  # Colab and AutoDL both run the notebooks as root
    home.mkdir(parents=True, exist_ok=True)
    disks = {**where["disks"], **(disks or {})}
    environ: dict[str, str | None] = {
        REHEARSAL_ENV_VAR: name,
        ROOT_ENV_VAR: str(root),
        DISKS_ENV_VAR: ",".join(f"{path}={gb}" for path, gb in disks.items()),
        "HOME": str(home),
        "COLAB_RELEASE_TAG": "rehearsal" if where["platform"] == "colab" else None,
    }
    for var in ("XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE", "MODELSCOPE_CACHE"):
        environ[var] = None
    for var in ("COURSE_PROFILE", "COURSE_HUB", "COURSE_OUTPUTS", "COURSE_CACHE"):
        environ[var] = None
    built = build_qwen_like(profile, root / "build")
    if where["platform"] == "colab":
        (root / COLAB_DRIVE.lstrip("/")).mkdir(parents=True, exist_ok=True)  # Drive is mounted
        cache = home / ".cache" / "huggingface" / "hub"
    else:  # AutoDL: the model was downloaded to the data disk, as notebook 00 arranges it
        cache = root / AUTODL_DATA_DISK.lstrip("/") / "modelscope" / "models"
    lay_out_as_hub(built, profile, where["layout"], cache)
    shutil.rmtree(built)
    return environ
