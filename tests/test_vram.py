"""Unit tests for helpers.vram: hand-computed arithmetic on a made-up shape, real param totals."""

from __future__ import annotations

import dataclasses

import pytest

from helpers.profiles import PROFILES
from helpers.vram import (
    GB,
    HEAD_TOKEN_TILE,
    HEAD_VOCAB_TILE,
    KNOWN_SHAPES,
    LABEL_SHARE,
    USABLE_VRAM_GB,
    ModelShape,
    TrainingPlan,
    estimate_for_profile,
    estimate_vram,
    plot_breakdown,
)

# d=64, L=2, h=4, kv=2, hd=16, I=128, V=100, untied, no bias.
# Per layer: attention 64*64 + 2*(64*32) + 64*64 = 12288; mlp 3*64*128 = 24576.
# Total: embedding 6400 + 2*(12288+24576) + norms (2*2*64 + 64 = 320) + lm_head 6400 = 86848.
SMALL = ModelShape("small", 64, 2, 4, 2, 16, 128, 100, False, False)
SMALL_TOTAL = 86848
TOKENS = 2 * 10  # batch 2 x seq 10


def plan(**overrides) -> TrainingPlan:
    base = dict(method="lora", seq_len=10, batch_size=2, lora_r=8, dtype="bfloat16")
    return TrainingPlan(**{**base, **overrides})


def test_small_param_counts_and_linear_shapes():
    counts = SMALL.param_counts()
    assert counts["attention_per_layer"] == 12288
    assert counts["mlp_per_layer"] == 24576
    assert counts["norms"] == 320
    assert counts["lm_head"] == 6400
    assert counts["total"] == SMALL_TOTAL
    assert SMALL.linear_shapes()["k_proj"] == (64, 32)
    assert SMALL.linear_shapes()["down_proj"] == (128, 64)


@pytest.mark.parametrize(
    "model_id,total",
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768),
        ("Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304),
        ("Qwen/Qwen2.5-3B-Instruct", 3_085_938_688),
        ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512),
        ("google/gemma-3-270m", 268_098_176),  # 4 norms/layer + q_norm/k_norm
    ],
)
def test_published_param_totals(model_id, total):
    assert KNOWN_SHAPES[model_id].param_counts()["total"] == total


def test_weights_bytes_by_method():
    assert estimate_vram(SMALL, plan()).weights == SMALL_TOTAL * 2
    assert estimate_vram(SMALL, plan(dtype="float32")).weights == SMALL_TOTAL * 4
    # QLoRA: 2 * 36864 linear weights at 4.126953125 bits = 38034 B; 13120 others at 2 B.
    qlora = estimate_vram(SMALL, plan(method="qlora"))
    assert qlora.weights == 38034 + 13120 * 2
    assert qlora.weights < estimate_vram(SMALL, plan()).weights
    # Full, mixed precision: fp32 master (4) + autocast copy (2), fp32 grads, AdamW 8 B/param.
    full = estimate_vram(SMALL, plan(method="full"))
    assert (full.weights, full.gradients) == (SMALL_TOTAL * 6, SMALL_TOTAL * 4)
    assert full.optimizer_states == SMALL_TOTAL * 8
    assert full.trainable_params == SMALL_TOTAL and full.adapter_weights == 0


def test_lora_trainable_counts():
    # r*(in+out) per module per layer; sum(in+out) over all 7 linears = 1024.
    all_linear = estimate_vram(SMALL, plan())
    assert all_linear.trainable_params == 2 * 8 * 1024
    qv = estimate_vram(SMALL, plan(target_modules=("q_proj", "v_proj")))
    assert qv.trainable_params == 2 * 8 * ((64 + 64) + (64 + 32))
    assert all_linear.adapter_weights == all_linear.gradients == 16384 * 4


def test_lora_count_matches_peft_on_a_real_model():
    peft = pytest.importorskip("peft")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=100,
    )
    model = peft.get_peft_model(
        Qwen2ForCausalLM(config), peft.LoraConfig(r=8, target_modules="all-linear")
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shape = ModelShape.from_config(config)
    assert estimate_vram(shape, plan()).trainable_params == trainable


def test_optimizer_bytes():
    assert estimate_vram(SMALL, plan()).optimizer_states == 16384 * 8
    assert estimate_vram(SMALL, plan(optimizer="paged_adamw_8bit")).optimizer_states == 16384 * 2


def test_activations_hand_computed_and_checkpointing():
    # Per token per layer, bf16: norms 2*4*64 + qkv in 128 + q/k/v 256 + attn out 128 + lse 16
    # + mlp in 128 + 4*2*128 = 2192; final norm (4+2)*64 = 384 per token.
    full = estimate_vram(SMALL, plan(method="full"))
    assert full.activations == TOKENS * (2 * 2192 + 384)
    ckpt = estimate_vram(SMALL, plan(method="full", gradient_checkpointing=True))
    assert ckpt.activations == TOKENS * (2 * 2 * 64 + 2192 + 384)
    # LoRA all-linear r=8 adds 2*(sum of in_features 512) + 2*8*7 = 1136 per token per layer.
    assert estimate_vram(SMALL, plan()).activations == TOKENS * (2 * 3328 + 384)
    # Eager attention keeps h*s scores per token: 4*10*(4+2) = 240 per layer.
    eager = estimate_vram(SMALL, plan(method="full", attention="eager"))
    assert eager.activations - full.activations == TOKENS * 2 * 240


def test_checkpointing_shrinks_activations_on_a_real_model():
    p = plan(method="qlora", seq_len=1024, batch_size=4)
    shape = KNOWN_SHAPES["Qwen/Qwen2.5-1.5B-Instruct"]
    off = estimate_vram(shape, p).activations
    on = estimate_vram(shape, dataclasses.replace(p, gradient_checkpointing=True)).activations
    assert on < off / 5


def test_fused_lm_head_hand_computed():
    # TRL's fused head: round(20 tokens * 0.2) = 4 label rows; one (4, 32768) tile in the compute
    # dtype (32768 columns although V = 100); per label: saved hidden a*d, fp32 grad 4*d, its
    # cast a*d, and 20 B of per-token vectors. bf16: 4*32768*2 + 4*(2*64 + 4*64 + 2*64 + 20).
    assert estimate_vram(SMALL, plan()).logits == 262144 + 4 * 532
    assert estimate_vram(SMALL, plan(dtype="float32")).logits == 4 * 32768 * 4 + 4 * 788
    assert estimate_vram(SMALL, plan(label_share=1.0)).logits == 20 * 32768 * 2 + 20 * 532
    # Full fine-tuning casts one 32768-row slice of the fp32 head to bf16: 32768 * 64 * 2.
    full = estimate_vram(SMALL, plan(method="full")).logits
    assert full == 262144 + 4 * 532 + 32768 * 64 * 2


def test_fused_lm_head_does_not_scale_with_vocab_times_seq_len():
    qwen = KNOWN_SHAPES["Qwen/Qwen2.5-1.5B-Instruct"]
    long = plan(method="qlora", batch_size=4, seq_len=8192, dtype="float16")
    head = estimate_vram(qwen, long).logits
    # The vocabulary only sets the GEMM's inner loop: a 2k or a 152k vocabulary, same bytes.
    assert estimate_vram(dataclasses.replace(qwen, vocab_size=2048), long).logits == head
    # Past 4096 label rows the tile is capped: doubling seq_len adds only per-label rows.
    longer = estimate_vram(qwen, dataclasses.replace(long, seq_len=16384)).logits
    per_label = 2 * 1536 + 4 * 1536 + 2 * 1536 + 20
    assert longer - head == (13107 - 6554) * per_label
    assert head - 6554 * per_label == HEAD_TOKEN_TILE * HEAD_VOCAB_TILE * 2  # the capped tile
    # Full (B, T, V) logits at 16-bit + fp32 log-probs + grad (the old term) are 200x more.
    assert longer * 200 < 4 * 16384 * qwen.vocab_size * (2 + 4 + 4)


def test_label_share_validation_and_profiles():
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="label_share must be in"):
            plan(label_share=bad)
    assert TrainingPlan.from_profile(PROFILES["t4"]).label_share == LABEL_SHARE
    assert TrainingPlan.from_profile(PROFILES["cpu-demo"]).label_share == 1.0  # TRL: all on CPU


def test_gpu_profile_totals():
    # t4: Qwen2.5-1.5B QLoRA fp16 4x1024; 24g: Qwen2.5-7B QLoRA bf16 2x2048 (both checkpointed).
    t4, big = estimate_for_profile(PROFILES["t4"]), estimate_for_profile(PROFILES["24g"])
    assert t4.logits == 819 * 32768 * 2 + 819 * (8 * 1536 + 20) == 63_754_236
    assert big.logits == 819 * 32768 * 2 + 819 * (8 * 3584 + 20) == 77_172_732
    assert t4.total_gb == pytest.approx(3.213, abs=0.001)
    assert big.total_gb == pytest.approx(9.253, abs=0.001)
    assert t4.logits < t4.activations / 10 and big.logits < big.activations / 20


def test_lm_head_flops_count_label_positions():
    # helpers.sft's MFU model, the FLOP side of the fused head: 4*V*d per labelled token.
    from helpers.sft import flops_per_token

    qwen = KNOWN_SHAPES["Qwen/Qwen2.5-1.5B-Instruct"]
    every, labelled = flops_per_token(qwen, 0, 256), flops_per_token(qwen, 0, 256, 0.2)
    assert every - labelled == pytest.approx(4 * 151936 * 1536 * 0.8)


def test_dataset_label_share_reads_trl_labels():
    from datasets import Dataset

    from helpers.sft import dataset_label_share

    rows = Dataset.from_dict(
        {"input_ids": [[1, 2, 3, 4], [5, 6]], "labels": [[-100, -100, 3, 4], [-100, 6]]}
    )
    assert dataset_label_share(rows) == pytest.approx(3 / 6)
    assert dataset_label_share(rows.remove_columns("labels")) == 1.0
    assert dataset_label_share(None) == 1.0


def test_monotonic_in_seq_len_and_batch():
    shape = KNOWN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"]
    totals = [estimate_vram(shape, plan(seq_len=s)).allocated_bytes for s in (128, 256, 512)]
    assert totals == sorted(totals) and len(set(totals)) == 3
    totals = [estimate_vram(shape, plan(batch_size=b)).allocated_bytes for b in (1, 2, 4)]
    assert totals == sorted(totals) and len(set(totals)) == 3


def test_totals_context_and_fragmentation():
    est = estimate_vram(SMALL, plan(), cuda_context_gb=1.0, fragmentation=0.5)
    parts = [est.weights, est.adapter_weights, est.gradients, est.optimizer_states]
    assert est.allocated_bytes == sum(parts) + est.activations + est.logits
    assert est.fragmentation == round(est.allocated_bytes * 0.5)
    assert est.total_bytes == est.allocated_bytes + est.fragmentation + GB
    assert est.total_gb == pytest.approx(est.total_bytes / GB)
    assert est.fits(1.01) and not est.fits(1.0)


def test_compare_with_measured_and_frame():
    est = estimate_vram(SMALL, plan())
    cmp = est.compare_with_measured(est.allocated_bytes // 2)
    assert cmp["ratio"] == pytest.approx(2.0, rel=1e-6)
    assert cmp["difference_gb"] == pytest.approx((est.allocated_bytes // 2 + 1) / GB, rel=1e-3)
    with pytest.raises(ValueError, match="bytes"):
        est.compare_with_measured(0)
    frame = est.to_frame()
    assert list(frame.columns) == ["component", "GB", "explanation"]
    assert {"weights", "logits", "cuda_context", "allocated", "total"} <= set(frame.component)
    assert frame.explanation.str.len().min() > 10


def test_from_config_qwen2_and_dicts():
    from transformers import Qwen2Config

    config = Qwen2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=100,
        tie_word_embeddings=True,
    )
    shape = ModelShape.from_config(config)
    assert (shape.head_dim, shape.num_kv_heads, shape.attention_bias) == (16, 2, True)
    assert shape.tie_word_embeddings and shape.param_counts()["lm_head"] == 0
    # Nested text_config (Gemma3 multimodal), no head_dim, no num_key_value_heads.
    nested = {
        "model_type": "gemma3",
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "vocab_size": 100,
        },
    }
    g = ModelShape.from_config(nested, name="g")
    assert (g.head_dim, g.num_kv_heads, g.norms_per_layer, g.qk_norm) == (16, 4, 4, True)
    assert not g.tie_word_embeddings and not g.attention_bias


@pytest.mark.parametrize("family", ["qwen2", "gemma3_text"])
def test_from_config_param_total_matches_a_real_model(family):
    import transformers

    kwargs = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        intermediate_size=96,
        vocab_size=120,
    )
    if family == "qwen2":
        config, cls = transformers.Qwen2Config(**kwargs), transformers.Qwen2ForCausalLM
    else:
        config = transformers.Gemma3TextConfig(head_dim=32, **kwargs)
        cls = transformers.Gemma3ForCausalLM
    model = cls(config)
    real = sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert ModelShape.from_config(config).param_counts()["total"] == real


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"method": "dora"}, "method must be one of"),
        ({"seq_len": 0}, "seq_len must be > 0"),
        ({"batch_size": -1}, "batch_size must be > 0"),
        ({"optimizer": "lion"}, "unknown optimizer 'lion'; known: adamw_torch"),
        ({"dtype": "fp8"}, "dtype must be one of"),
        ({"attention": "flash"}, "attention must be one of"),
        ({"target_modules": ("q_proj", "lm_head")}, "target_modules must be"),
        ({"lora_r": 0}, "lora_r must be > 0"),
    ],
)
def test_bad_inputs_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        plan(**overrides)


def test_profiles_and_plot():
    t4 = estimate_for_profile(PROFILES["t4"])
    assert t4.plan.optimizer == "paged_adamw_8bit" and t4.plan.gradient_checkpointing
    assert t4.fits(USABLE_VRAM_GB["t4"]) and USABLE_VRAM_GB["t4"] == 15.0  # 15360 MiB
    with pytest.raises(KeyError, match="from_config"):
        estimate_for_profile(PROFILES["tiny"])
    assert estimate_for_profile(PROFILES["tiny"], shape=SMALL).plan.dtype == "float32"

    import matplotlib

    matplotlib.use("Agg")
    ax = plot_breakdown({"t4": t4, "small": estimate_vram(SMALL, plan())}, vram_gb=15.0)
    assert len(ax.patches) == 2 * 8  # 8 components x 2 plans
    assert ax.lines and ax.lines[0].get_xdata()[0] == 15.0


# ---------------------------------------------------------------------------- N devices


def _plan_7b(method="qlora"):
    from helpers.vram import TrainingPlan

    return TrainingPlan(method, seq_len=1024, batch_size=1, gradient_checkpointing=True)


def test_sharding_divides_what_each_strategy_shards():
    from helpers.vram import estimate_sharded

    shape, plan = KNOWN_SHAPES["Qwen/Qwen2.5-7B-Instruct"], _plan_7b("lora")
    one = estimate_vram(shape, plan)
    assert estimate_sharded(shape, plan, "ddp", 8).total_bytes == one.total_bytes
    z1, z2, z3 = (estimate_sharded(shape, plan, s, 4) for s in ("zero1", "zero2", "zero3"))
    assert z1.optimizer_states == -(-one.optimizer_states // 4) and z1.gradients == one.gradients
    assert z2.gradients == -(-one.gradients // 4) and z2.weights == one.weights
    assert one.weights / 4 < z3.weights < one.weights / 2  # a quarter + two gathered layers
    assert z3.activations == one.activations  # each GPU still runs its own micro-batch
    off = estimate_sharded(shape, plan, "zero3", 4, offload=True)
    assert off.optimizer_states == 0 and off.weights < z3.weights
    assert estimate_sharded(shape, plan, "zero3", 1).total_bytes == one.total_bytes


def test_sharding_arguments_are_checked():
    from helpers.vram import estimate_sharded

    shape, plan = KNOWN_SHAPES["Qwen/Qwen2.5-7B-Instruct"], _plan_7b()
    with pytest.raises(ValueError, match="strategy"):
        estimate_sharded(shape, plan, "zero4", 2)
    with pytest.raises(ValueError, match="offload"):
        estimate_sharded(shape, plan, "ddp", 2, offload=True)
    with pytest.raises(ValueError, match="n_devices"):
        estimate_sharded(shape, plan, "ddp", 0)


def test_the_table_names_the_fastest_strategy_that_fits():
    from helpers.vram import multi_device_table

    shapes = {k: KNOWN_SHAPES[f"Qwen/Qwen2.5-{k}-Instruct"] for k in ("7B", "72B")}
    table = multi_device_table(shapes, {"qlora": _plan_7b(), "lora": _plan_7b("lora")})
    best = table.set_index(["model", "method", "GPUs"])["fastest fit"]
    assert best["7B", "qlora", 1] == "ddp"  # 03's 24g run: one card is enough
    assert best["72B", "lora", 8] == "zero3+offload"  # 145 GB of bf16 weights / 8 > 24 GB
    assert (table["zero3"] <= table["ddp"]).all()


def test_step_traffic_lora_all_reduce_is_small_next_to_zero3_gathers():
    from helpers.multi_gpu import step_traffic

    shape, plan = KNOWN_SHAPES["Qwen/Qwen2.5-7B-Instruct"], _plan_7b("lora")
    ddp = step_traffic(shape, plan, "ddp", 2)
    zero3 = step_traffic(shape, plan, "zero3", 2)
    assert step_traffic(shape, plan, "ddp", 1)["GB_per_gpu"] == 0
    assert ddp["GB_per_gpu"] < 0.5 < 10 < zero3["GB_per_gpu"]  # MB of LoRA grads vs 15 GB x 2
    four = step_traffic(shape, plan, "zero3", 2, grad_accum=4)["GB_per_gpu"]
    assert four == pytest.approx(4 * zero3["GB_per_gpu"])  # gathers repeat every micro-step
