"""helpers.quantize: merge, GGUF export and the variant comparison, on the tiny model.

The export chain must not change the model: base + adapter, the merged checkpoint and the
GGUF files give the same logits and greedy answers, within what each quantization allows,
and the GGUF files carry the model's own chat template and EOS.
"""

import json
import warnings

import pytest
import torch

from helpers import quantize
from helpers.models import CHATML_TEMPLATE, GEMMA_TEMPLATE

PROMPTS = ["你好，请介绍一下你自己。", "订单 A1024 的退款到账了吗？金额 128.5 元", "hello"]


def _prompt_ids(tokenizer, text: str) -> list[int]:
    chat = [{"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return tokenizer(rendered, add_special_tokens=False).input_ids


@pytest.fixture(scope="module")
def chain(tiny_export):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_export["base"], dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, tiny_export["adapter"]).eval()
    merged = AutoModelForCausalLM.from_pretrained(tiny_export["merged"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_export["merged"])
    return {**tiny_export, "adapted": adapted, "merged_model": merged.eval(), "tok": tokenizer}


def _greedy_hf(model, ids: list[int], n: int = 12) -> list[int]:
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()


def test_inference_template_renders_like_the_training_template(tiny_dir):
    """Without the markers the template renders exactly the same text (for llama.cpp, Ollama)."""
    import re

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    chat = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    for template in (CHATML_TEMPLATE, GEMMA_TEMPLATE):
        cleaned = quantize.inference_template(template)
        assert re.search(r"generation\s*-?%", template) and not re.search(
            r"generation\s*-?%", cleaned
        )
        for msgs, prompt in ((chat, False), (chat[:1], True)):
            want = tok.apply_chat_template(
                msgs, chat_template=template, tokenize=False, add_generation_prompt=prompt
            )
            got = tok.apply_chat_template(
                msgs, chat_template=cleaned, tokenize=False, add_generation_prompt=prompt
            )
            assert got == want


def test_merge_report_and_files(tiny_export):
    report = tiny_export["merge_report"]
    assert report["max_abs_logit_diff"] <= report["atol"]
    assert report["same_greedy_tokens"]
    assert report["adapter_effect"] > 0.05, "the random adapter must change the logits"
    merged = tiny_export["merged"]
    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()
    config = json.loads((merged / "generation_config.json").read_text())
    assert config["eos_token_id"] == 2  # <|im_end|>: generation stops at the end of the turn


def test_merge_refuses_a_quantized_base(tiny_dir, tiny_export, tmp_path):
    model, _ = quantize.load_bnb(tiny_export["merged"], 4)
    with pytest.raises(quantize.QuantizedBaseError, match="unquantized"):
        quantize.merge_adapter(model, tiny_export["adapter"], tmp_path / "m")


def test_adapter_and_merged_give_the_same_logits_and_answers(chain):
    for text in PROMPTS:
        ids = _prompt_ids(chain["tok"], text)
        with torch.no_grad():
            a = chain["adapted"](input_ids=torch.tensor([ids])).logits
            m = chain["merged_model"](input_ids=torch.tensor([ids])).logits
        assert (a - m).abs().max().item() < 1e-4
        assert _greedy_hf(chain["adapted"], ids) == _greedy_hf(chain["merged_model"], ids)


def _gguf_logits(path, ids):
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=256, logits_all=True, n_threads=1, verbose=False)
    llm.eval(ids)
    return torch.from_numpy(np.asarray(llm.scores[: len(ids)], dtype=np.float32)), llm


@pytest.mark.parametrize(("kind", "max_diff"), [("f32", 5e-3), ("q8_0", 0.1), ("q4_k_m", 0.6)])
def test_gguf_logits_match_the_merged_model(chain, kind, max_diff):
    """llama.cpp on the GGUF ≈ transformers on the merged model, looser as bits drop.

    f32 differs only by summation order and llama.cpp's f16 KV cache. Wherever the merged
    model's top token leads the runner-up by more than twice the error, the GGUF picks it too
    (the random tiny model has many near-ties, where any rounding may flip the choice).
    """
    for text in PROMPTS:
        ids = _prompt_ids(chain["tok"], text)
        with torch.no_grad():
            hf = chain["merged_model"](input_ids=torch.tensor([ids])).logits[0]  # (seq, vocab)
        gg, _ = _gguf_logits(chain["gguf"][kind], ids)
        error = (hf - gg).abs().max().item()
        assert error < max_diff, kind
        top2 = hf.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * error
        assert clear.any() or kind == "q4_k_m"  # q4's error exceeds every margin of this model
        assert torch.equal(hf.argmax(-1)[clear], gg.argmax(-1)[clear]), kind


def test_gguf_greedy_answers_equal_the_adapter_answers(chain):
    from helpers.quantize.compare import GGUFRunner, Variant

    runner = GGUFRunner(Variant("f32", "gguf", chain["gguf"]["f32"]))
    for text in PROMPTS:
        ids = _prompt_ids(chain["tok"], text)
        assert runner.generate(ids, 12) == _greedy_hf(chain["adapted"], ids)


@pytest.mark.parametrize("kind", ["f32", "q8_0", "q4_k_m"])
def test_gguf_keeps_template_eos_and_tokenization(chain, kind):
    texts = [
        chain["tok"].apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": "好的"}],
            tokenize=False,
        )
        for p in PROMPTS
    ]
    facts = quantize.check_gguf(chain["gguf"][kind], chain["tok"], texts)
    assert facts["eos_token"] == "<|im_end|>" and facts["template_ok"]
    info = quantize.gguf_info(chain["gguf"][kind])
    assert "{% generation" not in info["chat_template"] and "<|im_start|>" in info["chat_template"]


def test_check_gguf_catches_a_wrong_eos(chain):
    tok = chain["tok"]
    eos = tok.eos_token
    try:
        tok.eos_token = "<|endoftext|>"
        with pytest.raises(AssertionError, match="EOS"):
            quantize.check_gguf(chain["gguf"]["q8_0"], tok, ["hi"])
    finally:
        tok.eos_token = eos


def test_quantized_files_are_smaller(chain):
    sizes = {k: quantize.gguf_info(p)["size_mb"] for k, p in chain["gguf"].items()}
    assert sizes["q4_k_m"] < sizes["q8_0"] < sizes["f32"]
    assert "Q8_0" in quantize.gguf_info(chain["gguf"]["q8_0"])["tensor_types"]


def test_quantize_gguf_rejects_unknown_kind(chain, tmp_path):
    with pytest.raises(ValueError, match="q4_k_m"):
        quantize.quantize_gguf(chain["gguf"]["f32"], tmp_path / "x.gguf", "q3_weird")


def test_missing_converter_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(quantize.gguf_export.CONVERTER_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(quantize.ConverterMissingError, match="--no-deps --target"):
        quantize.convert_to_gguf(tmp_path, tmp_path / "x.gguf")


def test_compare_variants_measures_every_column(chain):
    from transformers import AutoTokenizer

    from helpers.profiles import get_profile
    from helpers.quantize import Variant, compare_variants
    from helpers.sft import validation_rows

    profile = get_profile("tiny")
    convs = [profile.style_messages(r["messages"]) for r in validation_rows(profile, 3)]
    training_tok = AutoTokenizer.from_pretrained(chain["adapter"])
    variants = [
        Variant("16-bit", "hf", chain["merged"]),
        Variant("bnb-4bit", "hf", chain["merged"], bits=4),
        Variant("gguf-q8_0", "gguf", chain["gguf"]["q8_0"]),
    ]
    frame = compare_variants(variants, training_tok, convs, max_new_tokens=8, speed_tokens=4)
    assert list(frame.index) == ["16-bit", "bnb-4bit", "gguf-q8_0"]
    for col in ("size_mb", "load_s", "prompt_tok_s", "decode_tok_s", "perplexity"):
        assert (frame[col] > 0).all(), col
    assert frame["field_accuracy"].between(0, 1).all()
    # the same model three ways: perplexities agree to a few percent
    ppl = frame["perplexity"]
    assert ppl.max() / ppl.min() < 1.05
    assert set(frame.attrs["answers"]) == set(frame.index)


def test_gpu_formats_refuse_to_run_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="GPTQ W4A16: skipped: needs a CUDA GPU"):
        quantize.quantize_gpu_format(tmp_path, tmp_path / "out", "GPTQ W4A16", ["hi"])
    with pytest.raises(ValueError, match="AWQ W4A16"):
        quantize.quantize_gpu_format(tmp_path, tmp_path / "out", "GGML", ["hi"])


def test_gpu_formats_skip_cleanly_on_cpu():
    rows = quantize.gpu_formats_status(cuda_available=False)
    assert {r["format"] for r in rows} == set(quantize.GPU_FORMATS)
    assert all(r["status"].startswith("skipped: needs a CUDA GPU") for r in rows)
    rows = quantize.gpu_formats_status(cuda_available=True)
    assert all(r["status"] == "available" or "pip install" in r["status"] for r in rows)


def test_export_base_gguf_keeps_the_base_model(tiny_dir, tmp_path):
    """The untuned base as GGUF: its own weights, the inference template, staging removed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = quantize.export_base_gguf(tiny_dir, tmp_path, kind="f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base-f16.gguf"]
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert quantize.check_gguf(path, tok, ["你好"])["template_ok"]
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    ids = _prompt_ids(tok, "hello")
    with torch.no_grad():
        hf = base(input_ids=torch.tensor([ids])).logits[0]
    gg, _ = _gguf_logits(path, ids)
    assert (hf - gg).abs().max().item() < 0.05


# --- precision, verification of the saved merge, resources ----------------------------------


@pytest.mark.parametrize(
    ("bf16", "expected"), [(False, torch.float16), (True, torch.bfloat16), (None, torch.float32)]
)
def test_compute_dtype_asks_the_hardware(monkeypatch, bf16, expected):
    """A T4 (sm_75) gets float16 although torch.cuda.is_bf16_supported() says yes; CPU float32."""
    from helpers import env

    gpu = None if bf16 is None else env.GpuInfo("GPU", 15.0, (8, 6) if bf16 else (7, 5), bf16)
    monkeypatch.setattr(env, "gpu_info", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation
    assert quantize.merge.compute_dtype() == expected


@pytest.mark.parametrize(
    ("bf16", "free_gib", "expected"),
    [
        (False, 10, ("cuda", "float16", "float16")),  # T4: merged and saved in fp16, on the GPU
        (True, 10, ("cuda", "bfloat16", "bfloat16")),
        (True, 0, ("cpu", "float32", "bfloat16")),  # GPU full: float32 on the CPU, saved bf16
    ],
)
def test_merge_plan_picks_device_and_dtype(
    tiny_dir, tmp_path, monkeypatch, bf16, free_gib, expected
):
    from helpers import env

    gpu = env.GpuInfo("GPU", 15.0, (8, 6) if bf16 else (7, 5), bf16)
    monkeypatch.setattr(env, "gpu_info", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free_gib * 2**30, 15 * 2**30))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = quantize.merge.merge_plan(tiny_dir, tmp_path / "m")
    assert (plan["device"], plan["merge_dtype"], plan["save_dtype"]) == expected
    assert any("merging on the CPU instead" in str(w.message) for w in caught) == (free_gib == 0)


def _safetensors_dtypes(folder) -> set[str]:
    import struct

    with open(folder / "model.safetensors", "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    return {t["dtype"] for k, t in header.items() if k != "__metadata__"}


def test_merge_on_cpu_checks_the_saved_bf16_file(tiny_export, tmp_path):
    """The check runs on what was written: bf16 rounding shows, within bf16's tolerance."""
    report = quantize.merge_adapter(tiny_export["base"], tiny_export["adapter"], tmp_path / "m")
    assert (report["device"], report["merge_dtype"], report["saved_dtype"]) == (
        "cpu",
        "float32",
        "bfloat16",
    )
    assert _safetensors_dtypes(tmp_path / "m") == {"BF16"}
    assert report["atol"] == quantize.merge.LOGIT_ATOL["bfloat16"]
    assert 1e-5 < report["max_abs_logit_diff"] <= report["atol"]  # not a float32 twin: ~1e-6
    assert report["max_abs_logit_diff"] < report["adapter_effect"] / 10
    # the random tiny model has near-ties (top-2 gaps of 1e-3) that bf16 rounding may flip
    assert report["greedy_tokens_checked"] == 32 and report["greedy_agreement"] >= 0.9


def test_merge_catches_a_corrupted_save_and_deletes_it(tiny_export, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file
    from transformers import PreTrainedModel

    save = PreTrainedModel.save_pretrained

    def save_then_corrupt(self, out_dir, *args, **kwargs):
        save(self, out_dir, *args, **kwargs)
        weights = load_file(out_dir / "model.safetensors")
        weights["model.norm.weight"] *= 1.5  # as a bad cast or a truncated write would
        save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_corrupt)
    with pytest.raises(AssertionError, match="weights were deleted"):
        quantize.merge_adapter(
            tiny_export["base"], tiny_export["adapter"], tmp_path / "m", save_dtype="float32"
        )
    assert not list((tmp_path / "m").glob("*.safetensors"))


def test_merge_refuses_before_loading_when_memory_is_short(tiny_export, tmp_path, monkeypatch):
    from helpers import resources

    short = resources.Memory(2**20, 2**30, "cgroup v2 limit /sys/fs/cgroup/memory.max (fake)")
    monkeypatch.setattr(resources, "available_memory", lambda: short)
    with pytest.raises(resources.InsufficientMemoryError, match="merging the adapter into"):
        quantize.merge_adapter(tiny_export["base"], tiny_export["adapter"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.fixture
def fake_llama_tools(monkeypatch):
    """Converter and quantizer that write small files: only the file handling is under test."""
    from helpers.quantize import gguf_export

    def convert(hf_dir, out_path, outtype="f16"):
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes(b"f16")
        return out_path

    def quantize_file(src, dst, kind):
        assert src.exists(), "the f16 file must exist while quantizing"
        dst.write_bytes(kind.encode())
        return dst

    monkeypatch.setattr(gguf_export, "convert_to_gguf", convert)
    monkeypatch.setattr(gguf_export, "quantize_gguf", quantize_file)


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("*.gguf"))


def test_export_gguf_deletes_the_f16_intermediate(tiny_export, tmp_path, fake_llama_tools):
    files = quantize.export_gguf(tiny_export["merged"], tmp_path / "a")
    assert list(files) == ["q8_0", "q4_k_m"]
    assert _names(tmp_path / "a") == ["model-q4_k_m.gguf", "model-q8_0.gguf"]
    kept = quantize.export_gguf(tiny_export["merged"], tmp_path / "b", ["q8_0"], keep_f16=True)
    assert set(kept) == {"f16", "q8_0"} and kept["f16"].exists()
    asked = quantize.export_gguf(tiny_export["merged"], tmp_path / "c", ["f16", "q8_0"])
    assert _names(tmp_path / "c") == ["model-f16.gguf", "model-q8_0.gguf"] and "f16" in asked


def test_export_base_gguf_deletes_its_f16(tiny_dir, tmp_path, fake_llama_tools):
    path = quantize.export_base_gguf(tiny_dir, tmp_path)
    assert path.name == "base-q8_0.gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base-q8_0.gguf"]


def test_export_refuses_a_disk_too_small_before_converting(tiny_export, tmp_path, monkeypatch):
    from collections import namedtuple

    from helpers import env, resources

    check = resources.check_output_disk
    tiny_disk = namedtuple("DiskUsage", "total used free")(10**9, 10**9, 1000)  # 1 kB free
    monkeypatch.setattr(
        resources,
        "check_output_disk",
        lambda *a, **k: check(*a, **k, platform="local", disk_usage=lambda _: tiny_disk),
    )
    out = tmp_path / "gguf"
    with pytest.raises(env.InsufficientDiskError) as info:
        quantize.export_gguf(tiny_export["merged"], out)
    message = str(info.value)
    assert "for the GGUF export of merged (f16 " in message and f"at {out}: " in message
    assert "0.0 GB free" in message and "COURSE_OUTPUTS" in message and "-f16.gguf" in message
    assert not out.exists()  # nothing converted
    with pytest.raises(ValueError, match="q4_k_m"):
        quantize.export_gguf(tiny_export["merged"], out, ["q3_weird"])
