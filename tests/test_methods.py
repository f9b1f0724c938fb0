"""helpers.methods and helpers.method_trainer on the tiny model: every method trains, progressive
unfreezing trains exactly the layers it has opened, the KL and EWC penalties start at zero."""

from __future__ import annotations

import pytest
import torch

from helpers import methods
from helpers.method_trainer import EWC, kl_to_base, layer_groups
from helpers.models import load_model
from helpers.profiles import get_profile
from helpers.sft import replay_rows, training_rows

TINY = get_profile("tiny")
ONE = methods.Budget(steps=1, batch=2, task_rows=2, probe_rows=2, general_rows=2)


@pytest.fixture(scope="module")
def rows():
    return training_rows(TINY)[0][:16]


def _trainer(tiny_dir, rows, method, tmp_path, budget=ONE):
    model, tokenizer = load_model(TINY, path=tiny_dir)
    model = methods.build(model, method, TINY)
    return methods.make_method_trainer(
        model, tokenizer, rows, method, TINY, budget, tmp_path, warmup_steps=0
    )


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(model, before) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_each_method_trains_only_what_it_may_change(name, tiny_dir, rows, tmp_path, one_thread):
    trainer = _trainer(tiny_dir, rows, methods.METHODS[name], tmp_path)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    before = _snapshot(trainer.model)
    trainer.train()
    changed = _changed(trainer.model, before)
    assert trainer.state.global_step == 1
    assert changed, f"{name}: one step changed nothing"
    if name != "progressive":  # progressive opens layers as it goes (tested below)
        assert changed <= trainable, changed - trainable
    if methods.METHODS[name].kind not in ("full", "frozen", "progressive"):  # peft: base frozen
        assert not [n for n in changed if "base_layer" in n or "embed_tokens" in n], changed


def test_progressive_unfreezing_trains_exactly_the_opened_layers(tiny_dir, rows, tmp_path):
    # tiny: head (final norm), layer 1, layer 0, embeddings; one more group opens every step
    budget = methods.Budget(steps=2, batch=2, task_rows=2, probe_rows=2, general_rows=2)
    trainer = _trainer(tiny_dir, rows, methods.METHODS["progressive"], tmp_path, budget)
    groups = dict(layer_groups(trainer.model))
    assert list(groups) == ["head", "layer 1", "layer 0", "embeddings"]
    before = _snapshot(trainer.model)
    trainer.train()
    (unfreeze,) = [c for c in trainer.callback_handler.callbacks if hasattr(c, "unfrozen")]
    unfrozen = unfreeze.unfrozen
    assert unfrozen == [(0, "head"), (1, "layer 1")]
    changed = _changed(trainer.model, before)
    for name, names in groups.items():
        moved = set(names) & changed
        if name in ("head", "layer 1"):
            assert moved == set(names), (name, set(names) - moved)  # every weight of it trained
        else:
            assert not moved, (name, moved)  # still frozen: not even weight decay touched it
    lrs = [g["initial_lr"] for g in trainer.optimizer.param_groups]  # before the schedule
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1]  # layer-wise: top learns fastest


def test_kl_to_the_base_is_zero_at_the_start_and_positive_after_training(tiny_dir, rows, tmp_path):
    method = methods.remedy("kl", kl_weight=1.0)
    budget = methods.Budget(steps=3, batch=2, task_rows=2, probe_rows=2, general_rows=2)
    trainer = _trainer(tiny_dir, rows, method, tmp_path, budget)
    batch = next(iter(trainer.get_train_dataloader()))
    assert kl_to_base(trainer.model, batch)[1].item() == 0.0  # B = 0: the adapter adds nothing
    trainer.train()
    assert trainer.penalties[0]["kl"] == 0.0 and len(trainer.penalties) == 3
    with torch.no_grad():
        assert kl_to_base(trainer.model, batch)[1].item() > 1e-6


def test_kl_needs_an_adapter(tiny_dir, rows, tmp_path):
    method = methods.remedy("kl-full", base="full", kl_weight=1.0)
    with pytest.raises(ValueError, match="peft model"):
        _trainer(tiny_dir, rows, method, tmp_path)


def test_ewc_protects_lora_b_only_and_starts_at_zero(tiny_dir, rows, tmp_path):
    method = methods.remedy("ewc", ewc_weight=1.0)
    budget = methods.Budget(steps=2, batch=2, task_rows=2, probe_rows=2, general_rows=2)
    trainer = _trainer(tiny_dir, rows, method, tmp_path, budget)
    ewc = trainer.ewc
    assert ewc.penalty(trainer.model).item() == 0.0
    a = [f for n, f in ewc.fisher.items() if "lora_A" in n]
    b = [f for n, f in ewc.fisher.items() if "lora_B" in n]
    assert a and all(torch.count_nonzero(f) == 0 for f in a)  # dL/dA = Bᵀ(...) = 0 at B = 0
    assert sum(f.sum() for f in b) > 0
    trainer.train()
    assert trainer.penalties[0]["ewc"] == 0.0
    assert ewc.penalty(trainer.model).item() > 0


def test_ewc_fisher_is_mean_one_over_the_trainable_parameters(tiny_dir):
    model, tokenizer = load_model(TINY, path=tiny_dir)
    model = methods.build(model, methods.METHODS["ia3"], TINY)
    ewc = EWC.estimate(model, tokenizer, methods.general_texts(replay_rows()[:2]))
    flat = torch.cat([f.flatten() for f in ewc.fisher.values()])
    assert set(ewc.fisher) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert flat.mean().item() == pytest.approx(1.0, rel=1e-5)


def test_the_fingerprint_tells_training_data_apart_and_the_agreement_says_so(
    tiny_dir, rows, tmp_path
):
    from helpers.method_reports import agreement

    same = _trainer(tiny_dir, rows, methods.METHODS["lora-qv"], tmp_path / "a")
    again = _trainer(tiny_dir, rows, methods.METHODS["lora-qv"], tmp_path / "b")
    other = _trainer(tiny_dir, rows[::-1], methods.METHODS["lora-qv"], tmp_path / "c")
    fingerprint = methods.data_fingerprint(same.train_dataset)
    assert fingerprint == methods.data_fingerprint(again.train_dataset)
    assert fingerprint != methods.data_fingerprint(other.train_dataset)  # same rows, new order
    stored = {"trainable_params": 10, "train_loss_last": 1.0, "task_loss": 2.0, "general_loss": 3.0,
              "training_data_sha256": fingerprint}  # fmt: skip
    table = agreement({**stored, "training_data_sha256": "0" * 12}, stored)
    assert list(table.index)[0] == "training_data_sha256" and not table["agrees"].iloc[0]
    assert agreement(dict(stored), stored)["agrees"].all()
    older = {k: v for k, v in stored.items() if k != "training_data_sha256"}  # before the field
    assert "training_data_sha256" not in agreement(stored, older).index
    assert not agreement({**stored, "task_loss": 2.1}, older)["agrees"].all()
