"""The course's SFTTrainer: TRL's own, except that on a CPU the LM head sees only label positions.

TRL 1.16 fuses the LM head with the loss. On CUDA it projects only the positions whose next
token is a label; on a CPU it projects *every* position (prompt and padding included) and runs
the head's matrix product three times per step (forward, and forward again plus backward in
the backward pass). For the cpu-demo model (Gemma 3 270M: a 262k-word vocabulary, 63% of its
parameters in the head) that is ~70% of a step's FLOPs, while ~42% of the positions carry a
label. :class:`CourseSFTTrainer` runs the backbone once, projects only the label positions and
takes the same loss TRL takes (summed negative log-likelihood over ``num_items_in_batch``),
logging the same entropy and token accuracy. Everywhere else (CUDA, label smoothing, a custom
loss, MoE auxiliary losses, logit soft-capping) it is TRL's path, unchanged.

With more than one process (DDP, FSDP, ZeRO on a CPU) it is TRL's path too: the course's forward
would go around the wrapper, and the gradients would not be synchronised across processes.

Padding costs the body only (the head skips it). Batches stay TRL's random ones: grouping
samples by length (transformers' ``train_sampling_strategy="group_by_length"``) was ~10% faster
on cpu-demo but made batches of one kind (the short self-cognition answers together) and
measurably hurt what the 40 steps taught (03's prose). Padding-free batches (TRL's
``padding_free``: one row, a block-diagonal mask from ``position_ids``) give the same loss on
both paths (tested) and were ~6% faster in ``bench/sft_throughput.py``; TRL then requires
``max_length=None`` (nothing truncated), so they are not the default yet.

    >>> trainer = CourseSFTTrainer(model=model, args=config, train_dataset=data, ...)
    >>> trainer.label_positions_only(trainer.model)  # True on a CPU
"""

from __future__ import annotations

import torch
from trl import SFTTrainer


def _causal_lm(model):
    """The transformers CausalLM inside an accelerate- and/or peft-wrapped model."""
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class CourseSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer; on CPU, the LM head projects only positions that carry a label."""

    def label_positions_only(self, model) -> bool:
        """Whether this step takes the course's path (else TRL's, which is then as fast)."""
        lm = _causal_lm(model)
        text = lm.config.get_text_config()
        return (
            next(lm.parameters()).device.type == "cpu"
            # one process only: the course's forward calls the inner model, around the DDP /
            # FSDP / DeepSpeed wrapper whose forward hooks make backward sync the gradients
            and self.accelerator.num_processes == 1
            and self.compute_loss_func is None
            and self.label_smoother is None
            and self.args.loss_type == "nll"
            and not self.aux_loss_enabled
            and getattr(text, "final_logit_softcapping", None) is None
            and getattr(text, "logit_scale", None) in (None, 1.0)
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss and metrics, from logits of the label positions only (CPU)."""
        if return_outputs or "shift_labels" in inputs or not self.label_positions_only(model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        lm = _causal_lm(model)
        features = {k: v for k, v in inputs.items() if k != "labels"}
        hidden = lm.base_model(**features, use_cache=False).last_hidden_state  # (batch, seq, d)
        targets = inputs["labels"][:, 1:]  # position t predicts token t + 1
        mask = targets != -100
        head = lm.get_output_embeddings()
        logits = torch.nn.functional.linear(hidden[:, :-1][mask], head.weight, head.bias)
        log_probs = logits.float().log_softmax(-1)  # (labels, vocab)
        picked = log_probs.gather(1, targets[mask][:, None]).squeeze(1)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        loss = -picked.sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as TRL does
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            correct = logits.argmax(-1) == targets[mask]
        self._log_step_metrics(mode, inputs, mask.sum(), entropy.sum(), correct.sum())
        return loss

    def _log_step_metrics(self, mode, inputs, valid, entropy_sum, correct) -> None:
        """The metrics TRL's compute_loss records (kept in step with trl 1.16's code)."""
        gather = self.accelerator.gather_for_metrics
        valid, entropy_sum = gather(valid).sum(), gather(entropy_sum).sum()
        correct = gather(correct).sum()
        metrics = self._metrics[mode]
        metrics["entropy"].append((entropy_sum / valid).item() if valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                tokens = gather(inputs["attention_mask"].sum()).sum().item()
            else:  # padding-free batches: one row of real tokens
                tokens = gather(torch.tensor(inputs["position_ids"].size(1))).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]


def flop_budget(trainer, batch: dict):  # -> pandas.DataFrame
    """One micro-batch's training FLOPs, by part: TRL's CPU head against the course's.

    Frozen body: forward + input gradients, 4 FLOPs per weight and position; LoRA: 6 per
    adapter weight and real token; the LM head: 2·d·V per projected position and product (TRL
    on a CPU: every position, three products; course: label positions, two).
    """
    import pandas as pd

    from helpers.vram import ModelShape

    lm = _causal_lm(trainer.model)
    shape = ModelShape.from_config(lm.config)
    counts = shape.param_counts()
    body = counts["total"] - counts["embedding"] - counts["lm_head"]
    lora = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    positions = batch["input_ids"].numel()
    real = int(batch["attention_mask"].sum())
    labels = int((batch["labels"][:, 1:] != -100).sum())
    product = 2 * shape.hidden_size * shape.vocab_size
    rows = {
        "body (frozen: forward + input grads)": 4 * body * positions,
        "LoRA adapters": 6 * lora * real,
        "LM head, TRL on a CPU (every position, 3 products)": 3 * product * positions,
        "LM head, course (label positions, 2 products)": 2 * product * labels,
    }
    table = pd.DataFrame({"GFLOP": {k: v / 1e9 for k, v in rows.items()}})
    shared = rows["body (frozen: forward + input grads)"] + rows["LoRA adapters"]
    trl = shared + rows["LM head, TRL on a CPU (every position, 3 products)"]
    course = shared + rows["LM head, course (label positions, 2 products)"]
    table.loc["step total, TRL"] = trl / 1e9
    table.loc["step total, course"] = course / 1e9
    table.attrs.update(positions=positions, real_tokens=real, labels=labels, ratio=trl / course)
    return table.round(1)


def time_both_paths(trainer, batch: dict) -> dict:
    """One forward + backward on ``batch`` through TRL's loss and through the course's."""
    import time

    count = (batch["labels"][:, 1:] != -100).sum()
    trainer.model.train()
    result = {}
    for name, loss_fn in (
        ("trl", SFTTrainer.compute_loss),
        ("course", CourseSFTTrainer.compute_loss),
    ):
        start = time.perf_counter()
        loss = loss_fn(trainer, trainer.model, dict(batch), num_items_in_batch=count)
        loss.backward()
        result[f"{name}_s"] = time.perf_counter() - start
        result[f"{name}_loss"] = loss.item()
    trainer.model.zero_grad()
    return result
