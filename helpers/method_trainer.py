"""What notebook 09 adds to the SFT trainer: forgetting remedies and progressive unfreezing.

* :class:`MethodTrainer`: the course's SFT trainer plus two penalties against forgetting.
  ``kl_weight`` adds KL(p_base || p_θ) on the answer tokens, where p_base is the *same* model
  with its adapter disabled (as ``helpers.dpo`` takes its reference: no second copy of the
  weights). ``ewc`` adds an :class:`EWC` penalty.
* :class:`EWC`: elastic weight consolidation with a diagonal Fisher estimated on general text.
  It protects what is trainable, relative to its value when the Fisher was taken. Under LoRA
  that is the adapter at its init: B = 0, and A's gradient is Bᵀ(...) = 0, so A's Fisher is
  exactly zero; the penalty pulls B (hence ΔW = BA) toward zero, weighted by how much each
  entry of B moves the general-text loss. The base weights are frozen and need no protection.
* :func:`progressive_optimizer` + :class:`Unfreeze`: progressive unfreezing with layer-wise
  learning rates. The Trainer builds its optimizer once, from the parameters trainable *then*;
  layers unfrozen later would never be stepped. So every parameter goes into the optimizer
  from the start (one group per layer, lr × decay^depth) and the frozen ones have
  ``requires_grad=False``: their ``.grad`` stays None and AdamW skips them (no update, no
  weight decay) until the callback unfreezes them.

    >>> ewc = EWC.estimate(model, tokenizer, general_texts)
    >>> trainer = MethodTrainer(model=model, args=config, ..., kl_weight=0.1, ewc=ewc)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import TrainerCallback

from helpers.sft_trainer import CourseSFTTrainer, _causal_lm


def _label_logits(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits at positions whose next token is a label, those labels): (n, vocab), (n,)."""
    lm = _causal_lm(model)
    features = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = lm.base_model(**features, use_cache=False).last_hidden_state  # (batch, seq, d)
    targets = inputs["labels"][:, 1:]
    mask = targets != -100
    head = lm.get_output_embeddings()
    return torch.nn.functional.linear(hidden[:, :-1][mask], head.weight, head.bias), targets[mask]


def kl_to_base(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, mean KL(p_base || p_θ)) on the answer tokens; base = adapter disabled."""
    logits, targets = _label_logits(model, inputs)
    log_p = logits.float().log_softmax(-1)  # (labels, vocab)
    with torch.no_grad(), model.disable_adapter():
        base_log_p = _label_logits(model, inputs)[0].float().log_softmax(-1)
    nll = -log_p.gather(1, targets[:, None]).sum()
    kl = (base_log_p.exp() * (base_log_p - log_p)).sum(-1).mean()
    return nll, kl


class EWC:
    """A diagonal Fisher of the trainable parameters on general text, and the EWC penalty."""

    def __init__(self, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]):
        self.fisher, self.anchor = fisher, anchor

    @classmethod
    def estimate(cls, model, tokenizer, texts: Sequence[str], max_length: int = 256) -> EWC:
        """Mean squared gradient of each text's LM loss, normalised to mean 1 (per entry)."""
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        was_training = model.training
        model.eval()  # no dropout: the Fisher of the model as it is
        for text in texts:  # one text per backward: the empirical Fisher is per sample
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
            ids = ids["input_ids"].to(next(model.parameters()).device)
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach() ** 2 / len(texts)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        mean = torch.cat([f.flatten() for f in fisher.values()]).mean().clamp(min=1e-30)
        anchor = {n: p.detach().clone() for n, p in params.items()}
        return cls({n: f / mean for n, f in fisher.items()}, anchor)

    def penalty(self, model) -> torch.Tensor:
        """Σ F·(θ − θ_anchor)² over the protected parameters (0 where nothing moved)."""
        total = torch.zeros(())
        for n, p in model.named_parameters():
            if n in self.fisher:
                total = total + (self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
        return total


class MethodTrainer(CourseSFTTrainer):
    """The course's SFT trainer; optional KL-to-base and EWC penalties added to the loss."""

    def __init__(self, *args, kl_weight: float = 0.0, ewc: EWC | None = None, ewc_weight=0.0, **kw):
        super().__init__(*args, **kw)
        self.kl_weight, self.ewc, self.ewc_weight = kl_weight, ewc, ewc_weight
        self.penalties: list[dict[str, float]] = []  # per step: the KL and the EWC term
        if kl_weight and not hasattr(self.model, "disable_adapter"):
            raise ValueError("kl_weight needs a peft model: the base is its adapter disabled.")

    def label_positions_only(self, model) -> bool:
        """As the course's trainer, except soft prompts: peft's own forward must add them."""
        configs = getattr(model, "peft_config", {}).values()
        if any(c.is_prompt_learning for c in configs):
            return False
        return super().label_positions_only(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """SFT loss + kl_weight · KL(p_base || p_θ) + ewc_weight/2 · EWC penalty."""
        if return_outputs or not (self.kl_weight or self.ewc_weight):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        logged = {}
        if self.kl_weight:
            nll, kl = kl_to_base(model, inputs)
            count = num_items_in_batch or (inputs["labels"][:, 1:] != -100).sum()
            loss = nll / torch.as_tensor(count).clamp(min=1) + self.kl_weight * kl
            logged["kl"] = kl.item()
        else:
            loss = super().compute_loss(model, inputs, False, num_items_in_batch)
        if self.ewc_weight:
            term = self.ewc.penalty(model)
            loss = loss + self.ewc_weight / 2 * term
            logged["ewc"] = term.item()
        if model.training:
            self.penalties.append(logged)
        return loss


# ---------------------------------------------------------------------------- unfreezing


def layer_groups(model) -> list[tuple[str, list[str]]]:
    """Parameter names grouped top-down: head and final norm, layers last..first, embeddings.

    With tied embeddings the LM head *is* the embedding matrix: it sits in the last group.
    """
    names = [n for n, _ in model.named_parameters()]
    layers = sorted({int(n.split(".layers.")[1].split(".")[0]) for n in names if ".layers." in n})
    embed = [n for n in names if "embed" in n and ".layers." not in n]
    top = [n for n in names if ".layers." not in n and n not in embed]
    groups = [("head", top)] if top else []
    groups += [(f"layer {i}", [n for n in names if f".layers.{i}." in n]) for i in layers[::-1]]
    return [*groups, ("embeddings", embed)]


def progressive_optimizer(model, lr: float, decay: float = 0.8, weight_decay: float = 0.0):
    """AdamW over *every* parameter, one group per layer: lr × decay^depth (top = depth 0)."""
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[n] for n in names], "lr": lr * decay**depth, "name": name}
        for depth, (name, names) in enumerate(layer_groups(model))
    ]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


class Unfreeze(TrainerCallback):
    """Start with only the top group trainable; unfreeze one more group every ``every`` steps."""

    def __init__(self, model, every: int):
        self.groups, self.every = layer_groups(model), max(1, every)
        self.params = dict(model.named_parameters())
        self.unfrozen: list[tuple[int, str]] = []  # (step, group) as it happened
        for p in model.parameters():
            p.requires_grad_(False)
        self._open(0)

    def _open(self, step: int) -> None:
        wanted = min(len(self.groups), 1 + step // self.every)
        for name, names in self.groups[len(self.unfrozen) : wanted]:
            for n in names:
                self.params[n].requires_grad_(True)
            self.unfrozen.append((step, name))

    def on_step_begin(self, args, state, control, **kwargs):
        self._open(state.global_step)
