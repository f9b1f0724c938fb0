"""Notebook 03's training run as a script: the program ``torchrun`` and ``accelerate launch`` start.

The same helpers and the same config as 03: rows from :func:`helpers.sft.training_rows`, the
model from :func:`helpers.models.load_model`, ``LoraConfig`` + ``SFTConfig`` from the profile
through :func:`helpers.sft.make_trainer` (03 checks in its section 4 that this config equals
the one it writes by hand). One process trains as 03 does; under a launcher every process runs
this same file and the Trainer (through accelerate) reads the launcher's environment: DDP,
FSDP2 or DeepSpeed ZeRO as ``configs/accelerate/*.yaml`` says. Rank 0 saves the adapter and
``summary.json`` in ``--output-dir``.

    python -m helpers.train_cli --output-dir outputs/sft-cli
    torchrun --nproc-per-node 2 -m helpers.train_cli --output-dir /tmp/ddp   # CPU: gloo
    accelerate launch --config_file configs/accelerate/ddp.yaml -m helpers.train_cli \\
        --output-dir /root/autodl-tmp/sft-ddp

Notebook 08's fine-tuning jobs (:mod:`helpers.jobs`) run it as a child process with the job's own
data (``--train-file``), length in epochs, checkpoints every ``--save-steps``, ``--resume`` after
a restart, and ``--events`` (one JSON line per logged step and per checkpoint, read by the
worker). With ``--graceful-stop`` SIGTERM stops training at the end of the current step, saves
a checkpoint there and exits with :data:`STOPPED_EXIT` (no final adapter): cancel and shutdown
keep the work done. Without it SIGTERM ends the process at once, as launchers expect (torchrun
stops the other ranks with it when one fails; they must not wait in a collective).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

SUMMARY_FILE = "summary.json"
ADAPTER_SUBDIR = "adapter"
STOPPED_EXIT = 3  # SIGTERM: stopped at a step boundary, a checkpoint saved there


def _override(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value), the value read as JSON when it parses (else a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"--set takes KEY=VALUE (an SFTConfig field); got {text!r}"
        )
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; every default comes from the profile, as in notebook 03."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", type=Path, required=True, help="checkpoints, adapter, summary")
    p.add_argument("--profile", help="tiny | cpu-demo | t4 | 24g (default: COURSE_PROFILE/auto)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (profile: max_steps)")
    p.add_argument("--per-device-batch-size", type=int, help="samples per process per micro-step")
    p.add_argument("--gradient-accumulation-steps", type=int, help="micro-steps per optimizer step")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--train-samples", type=int, help="main-task rows in the mix (profile)")
    p.add_argument("--seed", type=int, default=42, help="data order and LoRA init (03: 42)")
    p.add_argument(
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        help="recompute activations in backward (profile: gradient_checkpointing)",
    )
    p.add_argument(
        "--reentrant",
        action="store_true",
        help="the old reentrant checkpointing (torch.utils.checkpoint use_reentrant=True)",
    )
    p.add_argument("--eval-rows", type=int, help="validation rows for the eval loss (03: 16/200)")
    p.add_argument("--no-checkpoints", action="store_true", help="save only the final adapter")
    p.add_argument("--train-file", type=Path, help='JSONL of {"messages": [...]} rows (08)')
    p.add_argument("--validation-file", type=Path, help="JSONL rows for the eval loss (08)")
    p.add_argument("--epochs", type=int, help="passes over --train-file (sets the step count)")
    p.add_argument("--save-steps", type=int, help="a checkpoint every N steps (03: max_steps/4)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--events", type=Path, help="append a JSON line per log and checkpoint")
    p.add_argument(
        "--graceful-stop",
        action="store_true",
        help=f"SIGTERM: checkpoint at the end of the step, exit {STOPPED_EXIT} (08's cancel)",
    )
    p.add_argument(
        "--lora",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a LoraConfig field instead of the profile's, VALUE as JSON (08's page: r=32)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other SFTConfig field, VALUE as JSON (e.g. ddp_find_unused_parameters=false)",
    )
    return p.parse_args(argv)


def build_trainer(args: argparse.Namespace):  # -> (trl.SFTTrainer, Profile)
    """The trainer notebook 03 builds, with the command line's changes to the profile."""
    import dataclasses

    from helpers import models, sft
    from helpers.profiles import active_profile, get_profile

    profile = get_profile(args.profile) if args.profile else active_profile()
    changes = {
        "max_steps": args.max_steps,
        "per_device_batch_size": args.per_device_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "learning_rate": args.learning_rate,
        "train_samples": args.train_samples,
        "gradient_checkpointing": args.activation_checkpointing,
    }
    profile = dataclasses.replace(profile, **{k: v for k, v in changes.items() if v is not None})
    if args.train_file is not None:
        from helpers.data import read_jsonl

        rows = read_jsonl(args.train_file)
        val_rows = read_jsonl(args.validation_file) if args.validation_file else None
    else:
        rows, _ = sft.training_rows(profile)
        eval_rows = (
            args.eval_rows
            if args.eval_rows is not None
            else (16 if profile.device == "cpu" else 200)
        )
        val_rows = sft.validation_rows(profile, eval_rows) if eval_rows else None
    if args.epochs is not None:  # whole passes; the last batch may be short
        per_step = profile.per_device_batch_size * profile.gradient_accumulation_steps
        profile = dataclasses.replace(
            profile, max_steps=args.epochs * math.ceil(len(rows) / per_step)
        )
    every = args.save_steps or max(1, profile.max_steps // 4)  # 03's SAVE_EVERY
    config: dict[str, Any] = {"seed": args.seed, "save_steps": every}
    if val_rows:
        config.update(eval_steps=every, eval_on_start=True)
    if args.no_checkpoints:
        config["save_strategy"] = "no"
    if args.reentrant:
        config["activation_checkpointing_kwargs"] = {"use_reentrant": True}
    config.update(dict(args.overrides))
    callbacks: list[TrainerCallback] = [StopOnSignal()] if args.graceful_stop else []
    if args.events is not None:
        callbacks.append(EventsFile(args.events))
    model, tokenizer = models.load_model(profile)
    trainer = sft.make_trainer(
        model,
        tokenizer,
        rows,
        val_rows,
        profile,
        args.output_dir,
        callbacks=callbacks,
        lora=dict(args.lora),
        **config,
    )
    return trainer, profile


class StopOnSignal(TrainerCallback):
    """SIGTERM -> stop at the end of this step and save a checkpoint there (cancel, shutdown)."""

    def __init__(self) -> None:
        self.stopped = False
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.stopped = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped:
            control.should_save = True
            control.should_training_stop = True
        return control


class EventsFile(TrainerCallback):
    """One JSON line per logged step (loss, learning rate) and per checkpoint saved."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _write(self, **event: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": time.time(), **event}) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        self._write(type="start", step=state.global_step, total_steps=state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        keep = ("loss", "eval_loss", "learning_rate", "epoch", "mean_token_accuracy")
        values = {k: v for k, v in (logs or {}).items() if k in keep}
        if values:
            self._write(type="log", step=state.global_step, total_steps=state.max_steps, **values)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        tokens = int(state.num_input_tokens_seen or 0)
        self._write(type="checkpoint", step=state.global_step, path=str(folder), tokens=tokens)


def main(argv: list[str] | None = None) -> int:
    """Train; rank 0 writes ``<output-dir>/adapter`` and ``<output-dir>/summary.json``."""
    args = parse_args(argv)
    from helpers import sft

    trainer, profile = build_trainer(args)
    if trainer.args.fsdp and not trainer.is_fsdp_enabled:
        # accelerate 1.15 turns FSDP on for GPU-type backends only: on CPU processes (gloo)
        # it would silently train plain DDP, which would then pass for a working FSDP run
        raise RuntimeError(
            f"FSDP was asked for but accelerate set up {trainer.accelerator.distributed_type} "
            "(it enables FSDP on GPUs only). Run FSDP on GPUs, or drop --set fsdp=... on CPU."
        )
    resume = args.resume and any(args.output_dir.glob("checkpoint-*"))
    summary = sft.train(trainer, resume=resume)
    stopper = next(
        (c for c in trainer.callback_handler.callbacks if isinstance(c, StopOnSignal)), None
    )
    if (
        stopper is not None and stopper.stopped
    ):  # the checkpoint of this step is saved; the caller resumes or gives up
        return STOPPED_EXIT
    state = trainer.accelerator.state
    summary.update(
        profile=profile.name,
        world_size=state.num_processes,
        distributed_type=str(state.distributed_type),
        backend=state.backend,
        effective_batch=trainer.args.per_device_train_batch_size
        * trainer.args.gradient_accumulation_steps
        * state.num_processes,
        log=[h for h in trainer.state.log_history if "loss" in h],  # per logged step
        trained_tokens=int(trainer.state.num_input_tokens_seen or 0),
    )
    adapter = args.output_dir / ADAPTER_SUBDIR
    trainer.save_model(str(adapter))  # every rank: FSDP and ZeRO-3 gather the shards first
    if trainer.is_world_process_zero():
        missing = [name for name in sft.ADAPTER_FILES if not (adapter / name).exists()]
        if missing:
            raise FileNotFoundError(f"{adapter} lacks {missing}: the adapter was not saved")
        (args.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str))
        print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
