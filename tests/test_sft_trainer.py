"""CourseSFTTrainer's label-positions-only loss equals TRL's own path: loss, gradients, metrics.

On the tiny Qwen2 and on a Gemma 3 model with Gemma's real 262,144-word vocabulary (the shape
that makes the head expensive), same batch, same LoRA weights: one loss through
``CourseSFTTrainer.compute_loss`` and one through TRL's ``SFTTrainer.compute_loss``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from trl import SFTTrainer

from helpers import sft
from helpers.data import load_split
from helpers.profiles import get_profile
from helpers.sft_trainer import CourseSFTTrainer

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
PROFILE = dataclasses.replace(get_profile("tiny"), max_steps=1, per_device_batch_size=4)


@pytest.fixture(scope="module")
def gemma_dir(tiny_dir, tmp_path_factory):
    """A small Gemma 3 text model with Gemma 3 270M's vocabulary size and the tiny tokenizer."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    config = Gemma3TextConfig(
        vocab_size=262_144,  # Gemma 3 270M's; the tiny tokenizer's ids are all below 2048
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gemma")
    Gemma3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _trainer(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = load_split("train")[:8]
    lora = {"init_lora_weights": False}  # random B too: the adapter really changes the loss
    trainer = sft.make_trainer(
        model, AutoTokenizer.from_pretrained(model_dir), rows, None, PROFILE, tmp_path, lora=lora
    )
    assert isinstance(trainer, CourseSFTTrainer)
    return trainer


def _loss_and_grads(trainer, compute_loss, batch, count):
    trainer.model.zero_grad()
    loss = compute_loss(trainer, trainer.model, dict(batch), num_items_in_batch=count)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
    return loss.detach(), grads, metrics


@pytest.mark.parametrize("model", ["tiny", "gemma-vocab"])
def test_label_positions_only_equals_trl_loss_gradients_and_metrics(
    model, tiny_dir, gemma_dir, tmp_path
):
    trainer = _trainer(tiny_dir if model == "tiny" else gemma_dir, tmp_path)
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"][:, 1:]
    assert (labels == -100).any() and (labels != -100).any()  # prompt, padding and answers
    count = (labels != -100).sum()
    assert trainer.label_positions_only(trainer.model)
    ours = _loss_and_grads(trainer, CourseSFTTrainer.compute_loss, batch, count)
    trl = _loss_and_grads(trainer, SFTTrainer.compute_loss, batch, count)
    assert abs(ours[0] - trl[0]) / trl[0] < 1e-4, (ours[0], trl[0])
    assert ours[1].keys() == trl[1].keys() and ours[1]
    for name, grad in trl[1].items():
        torch.testing.assert_close(ours[1][name], grad, rtol=1e-3, atol=1e-6, msg=name)
    for name, value in trl[2].items():
        assert ours[2][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_trls_path_stays_where_it_already_projects_only_labels(tiny_dir, tmp_path):
    trainer = _trainer(tiny_dir, tmp_path)
    trainer.label_smoother = object()  # label smoothing needs the full logits: TRL's path
    assert not trainer.label_positions_only(trainer.model)


def test_padding_free_batches_give_the_same_loss_on_both_paths(tiny_dir, tmp_path):
    """TRL's padding-free collator: one row, position_ids restart per sample, no attention mask.

    transformers 5 turns the restarting position_ids into a block-diagonal causal mask for SDPA,
    so no sample attends to another; the loss equals the padded batch's on both paths.
    """
    trainer = _trainer(tiny_dir, tmp_path)
    trainer.model.train()
    data = trainer.train_dataset
    samples = [data[i] for i in range(PROFILE.per_device_batch_size)]
    padded = trainer.data_collator(samples)
    free = dataclasses.replace(trainer.data_collator, padding_free=True)(samples)
    assert "attention_mask" not in free and free["input_ids"].shape[0] == 1
    assert free["input_ids"].numel() == padded["attention_mask"].sum()  # no padding at all
    count = (padded["labels"][:, 1:] != -100).sum()
    assert (free["labels"][:, 1:] != -100).sum() == count  # no label crosses a sample boundary
    reference = _loss_and_grads(trainer, SFTTrainer.compute_loss, padded, count)[0]
    for path in (SFTTrainer.compute_loss, CourseSFTTrainer.compute_loss):
        loss = _loss_and_grads(trainer, path, free, count)[0]
        assert abs(loss - reference) / reference < 1e-5, (path, loss, reference)


def test_the_loss_does_not_depend_on_padding(tiny_dir, tmp_path):
    """The same samples padded to their batch's longest, or 37 positions further."""
    trainer = _trainer(tiny_dir, tmp_path)
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    pad = 37
    padded = {
        "input_ids": torch.nn.functional.pad(batch["input_ids"], (0, pad), value=0),
        "attention_mask": torch.nn.functional.pad(batch["attention_mask"], (0, pad), value=0),
        "labels": torch.nn.functional.pad(batch["labels"], (0, pad), value=-100),
    }
    count = (batch["labels"][:, 1:] != -100).sum()
    loss, grads, _ = _loss_and_grads(trainer, CourseSFTTrainer.compute_loss, batch, count)
    loss_p, grads_p, _ = _loss_and_grads(trainer, CourseSFTTrainer.compute_loss, padded, count)
    assert abs(loss - loss_p) / loss < 1e-5, (loss, loss_p)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_p[name], grad, rtol=1e-4, atol=1e-7, msg=name)
