"""Resuming from a checkpoint continues exactly: same losses and same adapter as one straight run.

k = 3 steps, checkpoint, stop; a new model and a new trainer resume to 2k = 6. Compared with an
uninterrupted 6-step run. Tolerance: atol 1e-6 on CPU float32 (the runs are bitwise equal in
practice; the slack covers summation order). lora_dropout = 0.1, so the dropout masks after the
resume only match if the checkpoint's RNG state is restored; the cosine schedule and AdamW
moments must be restored too.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from helpers import sft
from helpers.data import load_split
from helpers.models import load_model
from helpers.profiles import get_profile

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

K = 3
ATOL = 1e-6
TINY = get_profile("tiny")
OPTIONS = {
    "max_steps": 2 * K,
    "save_steps": K,
    "logging_steps": 1,
    "learning_rate": 5e-3,
    "report_to": "none",
    "disable_tqdm": True,
}
LORA = {"lora_dropout": 0.1}


class StopAt(TrainerCallback):
    """Stop training after step ``k`` (its checkpoint is still written)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.k:
            control.should_training_stop = True


def _run(tiny_dir, rows, out, resume=False, callbacks=()):
    """A fresh model and trainer; train (or resume) and return (trainer, summary)."""
    model, tokenizer = load_model(TINY, path=tiny_dir)
    trainer = sft.make_trainer(
        model, tokenizer, rows, None, TINY, out, callbacks=callbacks, lora=LORA, **OPTIONS
    )
    return trainer, sft.train(trainer, resume=resume)


def _losses(trainer) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def test_resume_matches_an_uninterrupted_run(tiny_dir, tmp_path):
    rows = load_split("train")[:32]
    straight, _ = _run(tiny_dir, rows, tmp_path / "straight")
    stopped, first = _run(tiny_dir, rows, tmp_path / "resumed", callbacks=[StopAt(K)])
    assert first["steps"] == K and (tmp_path / "resumed" / f"checkpoint-{K}").is_dir()

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _run(tiny_dir, rows, tmp_path / "empty", resume=True)
    speed = sft.ThroughputCallback()
    resumed, second = _run(tiny_dir, rows, tmp_path / "resumed", resume=True, callbacks=[speed])
    assert second["steps"] == 2 * K and speed.stats()["steps"] == K  # only steps k+1..2k ran

    want, got = _losses(straight), _losses(resumed)  # the history includes the checkpoint's
    assert sorted(got) == list(range(1, 2 * K + 1))
    for step in range(K + 1, 2 * K + 1):
        assert got[step] == pytest.approx(want[step], abs=ATOL), step
    assert _losses(stopped) == pytest.approx({s: want[s] for s in range(1, K + 1)}, abs=ATOL)

    a = load_file(tmp_path / "straight" / f"checkpoint-{2 * K}" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / f"checkpoint-{2 * K}" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=ATOL, rtol=0)


def test_dropout_makes_the_comparison_meaningful(tiny_dir, tmp_path):
    """A resume without the checkpoint's RNG state would draw other dropout masks: losses move."""
    rows = load_split("train")[:32]
    model, tokenizer = load_model(TINY, path=tiny_dir)
    trainer = sft.make_trainer(
        model, tokenizer, rows, None, TINY, tmp_path, lora=LORA, **{**OPTIONS, "max_steps": 1}
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which hides dropout until the first step
            torch.nn.init.normal_(param, std=0.02)
    trainer.model.train()
    losses = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        losses.append(trainer.model(**batch).loss.item())
    assert abs(losses[0] - losses[1]) > 1e-4  # different masks, different loss
