"""helpers.sft: profile configs, a short run on the tiny model, callbacks, adapters, stopping."""

from __future__ import annotations

import copy
import dataclasses

import matplotlib
import pytest
import torch
from transformers import TrainerCallback

from helpers import sft
from helpers.data import load_split
from helpers.data.lossmask import IGNORE_INDEX, loss_mask
from helpers.models import load_model
from helpers.profiles import PROFILES, get_profile
from helpers.vram import ModelShape

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

matplotlib.use("Agg")
TINY = get_profile("tiny")
FAST = {"report_to": "none", "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True}


@pytest.fixture(scope="module")
def rows():
    """A small slice of the course data: 48 train rows, 8 validation rows."""
    return load_split("train")[:48], load_split("val")[:8]


@pytest.fixture(scope="module")
def trained(tiny_dir, rows, tmp_path_factory):
    """A 16-step LoRA run on the tiny model with both callbacks attached."""
    model, tokenizer = load_model(TINY, path=tiny_dir)
    plot, speed = sft.LiveLossPlot(), sft.ThroughputCallback()
    out = tmp_path_factory.mktemp("sft")
    trainer = sft.make_trainer(
        model, tokenizer, rows[0], None, TINY, out, callbacks=[plot, speed],
        max_steps=16, learning_rate=5e-3, lr_scheduler_type="constant", **FAST,
    )  # fmt: skip
    summary = sft.train(trainer)
    return trainer, summary, plot, speed, out


@pytest.mark.parametrize("name", list(PROFILES))
def test_precision_and_course_defaults_follow_the_profile(name, tmp_path):
    profile = PROFILES[name]
    config = sft.sft_config(profile, tmp_path, report_to="none")
    assert (config.fp16, config.bf16) == {
        "t4": (True, False),
        "24g": (False, True),
        "tiny": (False, False),
        "cpu-demo": (False, False),
    }[name]
    assert config.activation_checkpointing == profile.gradient_checkpointing
    assert config.assistant_only_loss and not config.packing
    assert config.max_length == profile.max_length and config.max_steps == profile.max_steps
    assert config.optim == profile.optimizer
    assert config.use_cpu == (not torch.cuda.is_available())
    assert config.include_num_input_tokens_seen == "non_padding"


def test_config_overrides_and_epochs(tmp_path):
    config = sft.sft_config(TINY, tmp_path, num_train_epochs=2, lr_scheduler_type="linear")
    assert config.max_steps == -1 and config.num_train_epochs == 2
    assert config.lr_scheduler_type == "linear"
    with pytest.raises(TypeError):  # a misspelt option fails loudly, not silently
        sft.sft_config(TINY, tmp_path, max_seq_length=128)


def test_lora_config_from_profile_and_overrides():
    config = sft.lora_config(get_profile("t4"))
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)
    assert config.target_modules == "all-linear" and config.bias == "none"
    assert config.task_type == "CAUSAL_LM"
    assert sft.lora_config(TINY, r=4).lora_alpha == 8  # alpha = 2r when only r is given
    picked = sft.lora_config(TINY, r=4, lora_alpha=4, target_modules=("q_proj", "v_proj"))
    assert picked.lora_alpha == 4 and set(picked.target_modules) == {"q_proj", "v_proj"}


def test_training_loss_falls(trained):
    trainer, summary, *_ = trained
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 16 and summary["steps"] == 16
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    assert summary["final_loss"] == losses[-1] and summary["first_loss"] == losses[0]


def test_only_assistant_tokens_carry_loss(trained, rows):
    trainer = trained[0]
    tokenizer = trainer.processing_class
    data = trainer.train_dataset
    batch = trainer.data_collator(
        [{k: data[i][k] for k in ("input_ids", "labels")} for i in (0, 1)]
    )
    for i in (0, 1):
        keep = batch["attention_mask"][i].bool()
        ids, labels = batch["input_ids"][i][keep].tolist(), batch["labels"][i][keep].tolist()
        expect_ids, mask = loss_mask(rows[0][i], tokenizer, "assistant_only")
        assert ids == expect_ids
        assert [int(label != IGNORE_INDEX) for label in labels] == mask
        trained_text = tokenizer.decode(
            [t for t, label in zip(ids, labels, strict=True) if label >= 0]
        )
        reply = rows[0][i]["messages"][-1]["content"]
        assert trained_text == reply + "<|im_end|>"


def test_callbacks_report_throughput_and_curves(trained):
    trainer, summary, plot, speed, _ = trained
    stats = speed.stats()
    assert stats["steps"] == 16 and stats["tokens_per_s"] > 0 and stats["samples_per_s"] > 0
    assert stats["peak_memory_mb"] > 0 and stats["memory_kind"] == "peak RSS"
    assert stats["mfu"] is None and stats["device"] == "cpu"
    # the non-padding token count agrees with TRL's own count of attention-mask tokens
    assert stats["tokens"] == trainer._total_train_tokens
    assert stats["tokens"] < 16 * 4 * TINY.max_length  # padding was not counted
    assert summary["tokens_per_s"] == stats["tokens_per_s"]
    assert [h["step"] for h in plot.history if "loss" in h] == list(range(1, 17))
    assert len(plot.plot().get_lines()) == 1


def test_throughput_mfu_on_a_named_gpu_by_hand():
    speed = sft.ThroughputCallback()
    shape = ModelShape("toy", 4, 2, 2, 1, 2, 8, 10, True, False)
    speed.gpu_name, speed.shape, speed.n_lora = "Tesla T4", shape, 100
    speed.tokens, speed.samples, speed.step_seconds = 1600, 100, [1.0, 1.0]
    expected = 800 * sft.flops_per_token(shape, 100, 16) / 65e12
    assert speed.stats()["mfu"] == pytest.approx(expected)


def test_flops_per_token_by_hand():
    # d=4, L=2, h=2, kv=1, hd=2, I=8, V=10. Per layer q 16, k 8, v 8, o 16, gate/up/down 32 each
    # = 144; norms 2*(2*4) + 4 = 20; LM head 10*4 = 40; N = 288 + 20 + 40 = 348.
    tied = ModelShape("toy", 4, 2, 2, 1, 2, 8, 10, True, False)
    assert sft.flops_per_token(tied, n_lora=100, seq_len=16) == 4 * 348 + 6 * 100 + 12 * 2 * 4 * 16
    untied = dataclasses.replace(tied, tie_word_embeddings=False)  # same matmuls per token
    assert sft.flops_per_token(untied, 100, 16) == sft.flops_per_token(tied, 100, 16)


@pytest.mark.parametrize(
    "name, peak",
    [
        ("Tesla T4", 65e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("NVIDIA GeForce RTX 3090", 71e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", None),  # not an L4
        ("Quadro RTX 6000", None),
    ],
)
def test_gpu_peak_lookup(name, peak):
    assert sft.gpu_peak_flops(name) == peak


def test_adapter_saves_and_reloads_with_equal_logits(trained, tiny_dir, tmp_path):
    trainer = trained[0]
    path = sft.save_adapter(trainer, tmp_path / "adapter")
    prompts = ["订单 DD1234567890 还没到", "我要退款"]
    report = sft.reload_check(
        tiny_dir, path, trainer.processing_class, prompts, trained_model=trainer.model
    )
    assert set(sft.ADAPTER_FILES) <= set(report["files"])
    assert report["max_diff_vs_trained"] < 1e-5 and report["max_diff_vs_base"] > 1e-3


def test_reload_check_rejects_an_untrained_adapter(tiny_dir, tmp_path):
    from peft import get_peft_model

    model, tokenizer = load_model(TINY, path=tiny_dir)
    peft_model = get_peft_model(copy.deepcopy(model), sft.lora_config(TINY))  # B = 0: a no-op
    peft_model.save_pretrained(tmp_path)
    with pytest.raises(AssertionError, match="does not change"):
        sft.reload_check(model, tmp_path, tokenizer, ["你好"])
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        sft.reload_check(model, tmp_path / "nowhere", tokenizer, ["你好"])


class FreezeAfter(TrainerCallback):
    """Learning rate 0 after step k: from then on the weights, so the eval loss, stay put."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step >= self.k:  # the step about to run is k + 1 or later
            for group in optimizer.param_groups:
                group["lr"] = 0.0


def test_early_stopping_stops_when_eval_loss_stops_improving(tiny_dir, rows, tmp_path):
    model, tokenizer = load_model(TINY, path=tiny_dir)
    patience, every, k = 2, 2, 4
    trainer = sft.make_trainer(
        model, tokenizer, rows[0], rows[1], TINY, tmp_path, callbacks=[FreezeAfter(k)],
        early_stopping_patience=patience, eval_steps=every, max_steps=40, learning_rate=5e-3,
        lr_scheduler_type="constant", report_to="none", logging_steps=every, disable_tqdm=True,
    )  # fmt: skip
    summary = sft.train(trainer)
    evals = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    best_step = min(evals, key=lambda e: e[1])[0]
    assert evals[1][1] < evals[0][1]  # it was learning before the freeze
    assert best_step <= k and summary["steps"] < 40
    assert summary["steps"] == best_step + patience * every  # patience evals without progress
    assert summary["best_checkpoint"].endswith(f"checkpoint-{best_step}")


def test_qlora_path_on_cpu(tiny_dir, rows, tmp_path):
    """The tiny model in 4-bit NF4 through the same trainer (bitsandbytes >= 0.45 runs on CPU)."""
    bnb = pytest.importorskip("bitsandbytes", reason="pip install bitsandbytes for the QLoRA path")
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from helpers.models import bnb_config_kwargs

    profile = dataclasses.replace(TINY, method="qlora", gradient_checkpointing=True)
    quant = BitsAndBytesConfig(**bnb_config_kwargs(profile))
    model = AutoModelForCausalLM.from_pretrained(
        tiny_dir, quantization_config=quant, dtype=torch.float32, device_map={"": "cpu"}
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert model.is_loaded_in_4bit
    trainer = sft.make_trainer(
        model, tokenizer, rows[0][:16], None, profile, tmp_path, max_steps=3, **FAST
    )
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # not TRL's bf16
    base_q = trainer.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(base_q, bnb.nn.Linear4bit)
    before = [p.detach().clone() for p in trainable]
    summary = sft.train(trainer)
    assert summary["steps"] == 3 and torch.isfinite(torch.tensor(summary["final_loss"]))
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable, strict=True))


def test_live_plot_updates_one_display_in_a_notebook(monkeypatch):
    import IPython.display

    shown, updates = [], []

    class Handle:
        def update(self, obj):
            updates.append(obj)

    def display(obj, display_id=None):
        shown.append((obj, display_id))
        return Handle()

    monkeypatch.setattr(sft, "_in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", display)
    plot = sft.LiveLossPlot()
    state = type("State", (), {"global_step": 1})()
    for step, logs in enumerate([{"loss": 3.0}, {"loss": 2.5, "eval_loss": 2.8}, {"loss": 2.0}]):
        state.global_step = step + 1
        plot.on_log(None, state, None, logs=logs)
    assert len(shown) == 1 and shown[0][1] is True and len(updates) == 2  # one output, redrawn
    assert [h for h in plot.history if "eval_loss" in h] == [{"step": 2, "eval_loss": 2.8}]


def test_tensorboard_logs_go_to_autodl_panel(monkeypatch, tmp_path):
    monkeypatch.setattr(sft, "detect_platform", lambda: "autodl")
    assert sft.tensorboard_dir(tmp_path / "run1") == sft.Path("/root/tf-logs/run1")
    monkeypatch.setattr(sft, "detect_platform", lambda: "local")
    assert sft.tensorboard_dir(tmp_path / "run1") == tmp_path / "run1" / "runs"
    config = sft.sft_config(TINY, tmp_path, report_to=["tensorboard"])
    assert config.report_to == ["tensorboard"]


def test_training_rows_mix_task_identity_and_optional_replay(tmp_path, monkeypatch):
    from helpers.data import load_replay, load_self_cognition

    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))  # no notebook 01 output: shipped split
    rows, source = sft.training_rows(TINY)
    cognition = [r for r in load_self_cognition() if r["meta"]["split"] == "train"]
    assert len(rows) == TINY.train_samples + len(cognition)
    assert source.startswith("data/main/train.jsonl")
    assert rows == sft.training_rows(TINY)[0]  # seeded

    mixed, source = sft.training_rows(TINY, replay_share=0.2)
    general = {r["messages"][0]["content"] for r in load_replay()}
    replayed = [r for r in mixed if r["messages"][0]["content"] in general]
    assert len(replayed) == round(0.2 * len(rows) / 0.8)  # 20% of the final mix
    assert len(mixed) == len(rows) + len(replayed)
    assert "general replay rows (20%)" in source
    assert all(r["messages"][0]["role"] == "user" for r in replayed)  # no task system prompt
    categories = {
        r["category"]
        for r in load_replay()
        if r["messages"][0]["content"] in {m["messages"][0]["content"] for m in replayed}
    }
    assert categories == {"knowledge", "arithmetic", "unit_conversion"}  # shuffled, not a prefix
    many, _ = sft.training_rows(TINY, replay_share=0.9)  # more than exist: repeated
    assert sum(r["messages"][0]["content"] in general for r in many) == round(9 * len(rows))
    with pytest.raises(ValueError, match="replay_share"):
        sft.training_rows(TINY, replay_share=1.0)
    held_out = {r["messages"][0]["content"] for r in sft.replay_rows(held_out=True)}
    assert len(held_out) == 15 and not held_out & {m["messages"][0]["content"] for m in many}


def test_a_trained_adapter_keeps_training_its_own_weights(tiny_dir, trained, rows, tmp_path):
    """07's round 2: the round-1 adapter, loaded trainable, goes on learning (no second adapter)."""
    from peft import PeftModel

    trainer, _, _, _, out = trained
    sft.save_adapter(trainer, out / "round1")
    base, tokenizer = load_model(TINY, path=tiny_dir)
    model = PeftModel.from_pretrained(base, out / "round1", is_trainable=True)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="already has its adapter"):
        sft.make_trainer(model, tokenizer, rows[0][:8], None, TINY, tmp_path, lora={"r": 4})
    round2 = sft.make_trainer(
        model, tokenizer, rows[0][:8], None, TINY, tmp_path, max_steps=2, **FAST
    )
    assert list(round2.model.peft_config) == ["default"]  # the same adapter, not a new one
    sft.train(round2)
    now = dict(round2.model.named_parameters())
    assert set(start) == {n for n, p in now.items() if p.requires_grad}
    assert any(not torch.equal(start[n], now[n]) for n in start)
