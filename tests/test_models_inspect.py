"""helpers.models inspection: architecture summary, LoRA parameter table, template/EOS checks."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer

from helpers import models
from helpers.profiles import get_profile

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

TINY = get_profile("tiny")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """(model, tokenizer) of the tiny profile, shared read-only."""
    return models.load_model(TINY, path=tiny_dir)


@pytest.fixture
def tokenizer(tiny_dir):
    """A fresh tokenizer each test: the break-it tests edit it."""
    return AutoTokenizer.from_pretrained(tiny_dir)


def test_architecture_summary_of_the_tiny_qwen2(tiny):
    model, _ = tiny
    s = models.architecture_summary(model)
    assert s["total_params"] == sum(p.numel() for p in model.parameters())
    assert s["trainable_params"] == s["total_params"]  # nothing frozen yet
    assert s["embedding_params"] == model.config.vocab_size * 128 and s["tied_embeddings"]
    assert s["lora_targets"] == sorted(ALL)  # lm_head is not a LoRA target
    by_type = {row["module"]: row for row in s["linear_types"]}
    assert all(row["count"] == 2 for row in by_type.values())  # one per layer
    assert (by_type["k_proj"]["in_features"], by_type["k_proj"]["out_features"]) == (128, 64)
    assert (by_type["down_proj"]["in_features"], by_type["down_proj"]["out_features"]) == (384, 128)
    assert s["memory_mb"] == pytest.approx(s["total_params"] * 4 / 2**20, rel=0.01)
    assert s["dtype"] == "float32"


@pytest.mark.parametrize("r", [4, 16])
def test_lora_table_equals_peft_count(tiny, r):
    model, _ = tiny
    table = models.lora_param_table(model, ranks=(r,))
    assert list(table["targets"]) == list(models.LORA_TARGET_SETS)
    for label, targets in models.LORA_TARGET_SETS.items():
        config = LoraConfig(
            r=r, target_modules=targets if isinstance(targets, str) else list(targets)
        )
        trainable, total = get_peft_model(
            copy.deepcopy(model), config
        ).get_nb_trainable_parameters()
        row = table[table["targets"] == label].iloc[0]
        assert row["lora_params"] == trainable, label
        assert row["pct_of_total"] == pytest.approx(100 * trainable / total)


def test_lora_table_by_hand_and_unknown_targets(tiny):
    model, _ = tiny
    # q,v at r=8: 2 layers * 8 * ((128+128) + (128+64)) = 7168
    table = models.lora_param_table(model, ranks=(8,), target_sets={"q,v": ("q_proj", "v_proj")})
    assert table["lora_params"].tolist() == [7168]
    with pytest.raises(ValueError, match="matches no Linear"):
        models.lora_param_table(model, target_sets={"typo": ("qproj",)})


def _by_check(findings):
    return {f["check"]: f for f in findings}


def test_course_template_passes_every_check(tiny, tokenizer):
    model, _ = tiny
    found = _by_check(models.check_template_and_eos(tokenizer, model, strict=True))
    assert all(f["ok"] for f in found.values()), found
    assert "<|im_end|>" in found["eot_in_generation_eos"]["detail"]


def test_no_generation_markers(tokenizer):
    tokenizer.chat_template = models.CHATML_TEMPLATE.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    found = _by_check(models.check_template_and_eos(tokenizer))
    assert found["generation_markers"]["ok"] is False and found["eot_trained"]["ok"] is None
    assert "generation" in found["generation_markers"]["fix"]


def test_generation_eos_without_the_end_of_turn_token(tiny, tokenizer):
    model = copy.deepcopy(tiny[0])
    model.generation_config.eos_token_id = [tokenizer.pad_token_id]  # <|endoftext|> only
    found = _by_check(models.check_template_and_eos(tokenizer, model))
    assert found["eot_in_generation_eos"]["ok"] is False
    assert (
        str(tokenizer.convert_tokens_to_ids("<|im_end|>")) in found["eot_in_generation_eos"]["fix"]
    )
    with pytest.raises(ValueError, match="eot_in_generation_eos"):
        models.check_template_and_eos(tokenizer, model, strict=True)


def test_end_of_turn_outside_the_generation_span(tokenizer):
    tokenizer.chat_template = models.CHATML_TEMPLATE.replace(
        "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}",
        "{% generation %}{{- message['content'] }}{% endgeneration %}{{- '<|im_end|>' }}",
    )
    found = _by_check(models.check_template_and_eos(tokenizer))
    assert found["generation_markers"]["ok"] and found["eot_trained"]["ok"] is False
    assert "0/5" in found["eot_trained"]["detail"]


def test_pad_token_equal_to_eos(tokenizer):
    tokenizer.pad_token = tokenizer.eos_token
    found = _by_check(models.check_template_and_eos(tokenizer))
    assert found["pad_differs_from_eos"]["ok"] is False


def test_inference_prompt_differs_from_training(tokenizer):
    tokenizer.chat_template = models.CHATML_TEMPLATE.replace(
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}",
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n\\n' }}",
    )
    found = _by_check(models.check_template_and_eos(tokenizer))
    assert found["train_matches_inference"]["ok"] is False
    assert all(
        f["ok"] for k, f in found.items() if k != "train_matches_inference" and f["ok"] is not None
    )


def test_prepare_for_training_lets_gradients_reach_the_adapters(tiny_dir):
    model, tokenizer = models.load_model(TINY, path=tiny_dir)
    profile = dataclasses.replace(TINY, gradient_checkpointing=True)
    done = models.prepare_for_training(model, profile)
    assert done["gradient_checkpointing"] and model.config.use_cache is False
    assert not any(p.requires_grad for p in model.parameters())
    assert model.is_activation_checkpointing
    ids = torch.tensor([[5, 6, 7, 8]])
    assert model.get_input_embeddings()(ids).requires_grad  # frozen weights, grad-carrying output
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))
    peft_model.train()
    peft_model(input_ids=ids, labels=ids).loss.backward()
    # B starts at zero, so A's gradient is zero on the first step; B's must not be
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_known_template_without_markers_uses_trls_training_copy(tokenizer):
    from pathlib import Path

    import trl

    qwen = Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja"  # Qwen2.5's own
    if not qwen.exists():
        pytest.skip(f"this TRL ships no {qwen.name}")
    tokenizer.chat_template = qwen.read_text()
    found = _by_check(models.check_template_and_eos(tokenizer))
    assert "TRL swaps in" in found["generation_markers"]["detail"]
    assert found["eot_trained"]["ok"] and found["train_matches_inference"]["ok"]
