"""Checks at upload and at job creation: every problem named by line and field, with the fix.

A training file is JSONL in one of OpenAI's two layouts, checked row by row with
:func:`helpers.data.io.to_messages` (the course's own loader and its :class:`DataError`):

    {"messages": [{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}]}
    {"prompt": "…", "completion": "…"}

A bad file is refused whole (nothing is stored, nothing silently dropped) with its first
problems listed. An assistant turn's ``weight`` must be 0 or 1 as in OpenAI's format: weight 0
is kept on the turn and the trainer gives its tokens label -100
(:func:`helpers.data.lossmask.mask_unweighted_turns`); an example with no trained turn is refused.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from helpers.data.io import detect_format, to_messages
from helpers.data.validation import DataError

MIN_EXAMPLES = 10  # OpenAI's minimum for a training file
MAX_PROBLEMS_SHOWN = 5
LAYOUTS = ("openai_chat", "prompt_completion")
LIMITS = {"n_epochs": (1, 50), "batch_size": (1, 256), "learning_rate_multiplier": (0.0, 10.0)}
# Not OpenAI's: the LoRA and scheduler settings of the training page (text-generation-webui's
# "Train LoRA" tab), passed on to helpers.train_cli; absent, the profile's (notebook 03's) apply.
LORA_LIMITS = {"lora_rank": (1, 256), "lora_alpha": (1, 1024)}
SCHEDULERS = ("linear", "constant", "constant_with_warmup", "cosine", "cosine_with_restarts",
              "polynomial", "inverse_sqrt")  # fmt: skip
_MODULE = re.compile(r"^[A-Za-z0-9_.]{1,64}$")
MAX_STEPS = 5000  # epochs x steps per epoch; a bigger job is refused, not queued for days
_SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class Invalid(ValueError):
    """A request or file problem: ``message`` for the learner, ``param`` the field it is in."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _weight_problem(record: dict[str, Any]) -> DataError | None:
    for i, turn in enumerate(record.get("messages") or []):
        if not isinstance(turn, dict) or "weight" not in turn:
            continue
        field = f"messages[{i}].weight"
        if turn.get("role") != "assistant":
            return DataError(
                "bad_weight",
                "only assistant turns take a weight",
                field=field,
                fix="remove the weight key from this turn",
            )
        if turn["weight"] not in (0, 1) or isinstance(turn["weight"], bool):
            return DataError(
                "bad_weight",
                f"weight is {turn['weight']!r}",
                field=field,
                fix="use 1 (train on this turn) or 0 (do not)",
            )
    turns = [t for t in record.get("messages") or [] if isinstance(t, dict)]
    weights = [t.get("weight", 1) for t in turns if t.get("role") == "assistant"]
    if weights and not any(weights):
        return DataError(
            "no_trained_turn",
            "every assistant turn has weight 0, so nothing in this example is trained",
            field="messages",
            fix="set weight 1 (or drop the key) on at least one assistant turn, or drop the line",
        )
    return None


def parse_rows(data: bytes) -> list[dict[str, Any]]:
    """``{"messages": [...]}`` rows from a JSONL training file, or :class:`Invalid` naming lines."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(
            f"The file is not UTF-8 (byte {exc.start}): re-save it as UTF-8, e.g. "
            "`iconv -f GBK -t UTF-8 in.jsonl > out.jsonl`.",
            "file",
            "invalid_file_encoding",
        ) from None
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        try:
            if not line.strip():
                raise DataError(
                    "empty_line", "blank line", fix="remove blank lines: one JSON object per line"
                )
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError("malformed_json", exc.msg) from None
            if not isinstance(record, dict):
                raise DataError("wrong_type", f"a JSON {type(record).__name__}, not an object")
            fmt = detect_format(record)
            if fmt not in LAYOUTS:
                raise DataError(
                    "unknown_format",
                    f"keys {sorted(record)}",
                    fix='write {"messages": [...]} or {"prompt": ..., "completion": ...} rows '
                    "(helpers.data.export_openai_chat converts the other layouts)",
                )
            problem = _weight_problem(record)
            if problem is not None:
                raise problem
            messages = to_messages(record, fmt)
            if fmt == "openai_chat":  # to_messages keeps role and content; weight 0 rides along
                for turn, source in zip(messages, record["messages"], strict=True):
                    if source.get("weight") == 0:
                        turn["weight"] = 0
            rows.append({"messages": messages})
        except DataError as err:
            problems.append(str(err.located(None, number)))
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        tail = f" (and {more} more)" if more > 0 else ""
        raise Invalid(
            f"{len(problems)} of {len(lines)} lines are invalid, nothing was stored: {shown}{tail}",
            "file",
            "invalid_file_format",
        )
    if not rows:
        raise Invalid(
            "The file has no examples: write one JSON object per line.",
            "file",
            "invalid_file_format",
        )
    return rows


@dataclass(frozen=True)
class Hyper:
    """A job's hyperparameters as they will run (``auto`` resolved)."""

    n_epochs: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    lora: dict[str, Any] | None = None  # peft LoraConfig fields: r, lora_alpha, target_modules
    lr_scheduler_type: str | None = None

    @property
    def batch_size(self) -> int:
        return self.per_device_batch_size * self.gradient_accumulation_steps

    def shown(self, multiplier: float) -> dict[str, Any]:
        """The OpenAI ``hyperparameters`` object with the values the job runs with."""
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": multiplier,
        }


def _number(hp: dict[str, Any], name: str, param: str) -> float | int | None:
    value = hp.get(name, "auto")
    if value == "auto" or value is None:
        return None
    low, high = LIMITS[name]
    kind = float if name == "learning_rate_multiplier" else int
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"{param}.{name} must be a number or 'auto', got {value!r}.", param)
    if kind is int and value != int(value):
        raise Invalid(f"{param}.{name} must be a whole number, got {value!r}.", param)
    if not (low < value <= high if kind is float else low <= value <= high):
        raise Invalid(f"{param}.{name}={value!r} is out of range ({low}..{high}).", param)
    return kind(value)


def hyperparameters(body: dict[str, Any], profile: Any, n_rows: int) -> tuple[Hyper, float]:
    """Hyperparameters from ``hyperparameters`` or ``method.supervised``; ``auto`` resolved."""
    method = body.get("method")
    hp, param = body.get("hyperparameters"), "hyperparameters"
    if method is not None:
        kind = method.get("type") if isinstance(method, dict) else None
        if kind != "supervised":
            raise Invalid(
                f"method.type {kind!r} is not supported here: this server runs 'supervised' "
                "fine-tuning (DPO runs in notebook 10 with helpers.dpo).",
                "method.type",
                "unsupported_method",
            )
        if hp is not None:
            raise Invalid(
                "Give hyperparameters in method.supervised.hyperparameters only "
                "(the top-level field is the older spelling).",
                "hyperparameters",
            )
        hp = (method.get("supervised") or {}).get("hyperparameters")
        param = "method.supervised.hyperparameters"
    hp = hp or {}
    if not isinstance(hp, dict):
        raise Invalid(f"{param} must be an object.", param)
    allowed = [*LIMITS, *LORA_LIMITS, "lora_target_modules", "lr_scheduler_type"]
    unknown = sorted(set(hp) - set(allowed))
    if unknown:
        raise Invalid(f"{param} has unknown keys {unknown}; allowed: {sorted(allowed)}.", param)
    batch = _number(hp, "batch_size", param)
    per_device = (
        profile.per_device_batch_size
        if batch is None
        else min(batch, profile.per_device_batch_size)
    )
    accumulation = (
        profile.gradient_accumulation_steps if batch is None else math.ceil(batch / per_device)
    )
    per_step = per_device * accumulation
    epochs = _number(hp, "n_epochs", param)
    if epochs is None:  # about the profile's (notebook 03's) number of steps
        epochs = min(50, max(1, round(profile.max_steps * per_step / n_rows)))
    steps = epochs * math.ceil(n_rows / per_step)
    if steps > MAX_STEPS:
        raise Invalid(
            f"{epochs} epochs of {n_rows} examples at batch {per_step} are {steps} steps, above "
            f"this server's limit of {MAX_STEPS}: use fewer epochs or a larger batch_size.",
            param,
        )
    multiplier = _number(hp, "learning_rate_multiplier", param) or 1.0
    lr = profile.learning_rate * multiplier
    hyper = Hyper(int(epochs), per_device, accumulation, lr, *_lora_and_scheduler(hp, param))
    return hyper, multiplier


def _lora_and_scheduler(hp: dict[str, Any], param: str) -> tuple[dict | None, str | None]:
    """The page's extra settings, bounded: LoRA rank, alpha, target modules and the scheduler."""
    lora: dict[str, Any] = {}
    for name, key in (("lora_rank", "r"), ("lora_alpha", "lora_alpha")):
        if name in hp:
            low, high = LORA_LIMITS[name]
            value = hp[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise Invalid(f"{param}.{name} must be a whole number in {low}..{high}.", param)
            lora[key] = value
    if "lora_target_modules" in hp:
        targets = hp["lora_target_modules"]
        names = targets if isinstance(targets, list) else None
        if not (
            targets == "all-linear"
            or (
                names
                and len(names) <= 16
                and all(isinstance(n, str) and _MODULE.match(n) for n in names)
            )  # fmt: skip
        ):
            raise Invalid(
                f"{param}.lora_target_modules must be 'all-linear' or a list of module names "
                "such as ['q_proj', 'v_proj'].",
                param,
            )
        lora["target_modules"] = targets
    scheduler = hp.get("lr_scheduler_type")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise Invalid(f"{param}.lr_scheduler_type must be one of {list(SCHEDULERS)}.", param)
    return lora or None, scheduler


def suffix_and_metadata(body: dict[str, Any]) -> tuple[str | None, dict[str, str] | None]:
    """``suffix`` (letters, digits, - and _, up to 40) and ``metadata`` (16 string pairs)."""
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not _SUFFIX.match(suffix)):
        raise Invalid(f"suffix {suffix!r} must be 1-40 letters, digits, '-' or '_'.", "suffix")
    metadata = body.get("metadata")
    if metadata is not None:
        ok = (
            isinstance(metadata, dict)
            and len(metadata) <= 16
            and all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                for k, v in metadata.items()
            )
        )
        if not ok:
            raise Invalid(
                "metadata must be at most 16 string pairs (keys <= 64 characters, values <= 512).",
                "metadata",
            )
    return suffix, metadata
