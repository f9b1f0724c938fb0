"""The course's own datasets: schema, system prompt, assistant identity, loaders, checksums.

>>> from helpers.data.course import load_split
>>> len(load_split("train"))
2000
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ASSISTANT_NAME = "小调"
ASSISTANT_NAME_EN = "TuneBot"
ASSISTANT_TEAM = "LLM 微调实战 课程组"

INTENTS = (
    "track_order",
    "refund",
    "exchange",
    "change_address",
    "urge_shipping",
    "complaint",
    "product_question",
    "invoice",
)
SENTIMENTS = ("positive", "neutral", "negative")
URGENCIES = ("low", "medium", "high")
FIELDS = ("intent", "order_id", "product", "amount", "sentiment", "urgency")

SYSTEM_PROMPT = (
    "把电商客服消息解析为一行 JSON，键依次为 intent,order_id,product,amount,sentiment,urgency。"
    "intent∈track_order|refund|exchange|change_address|urge_shipping|complaint|"
    "product_question|invoice（多个诉求取最先提到的）；order_id 为 DD+10位数字；"
    "product 为原文商品名；amount 为数字；没有则为 null；"
    "sentiment∈positive|neutral|negative；urgency∈low|medium|high。"
)

DATA_ENV_VAR = "COURSE_DATA_DIR"
SPLITS = ("train", "val", "test")


def data_dir() -> Path:
    """The repository's data/ folder (override with $COURSE_DATA_DIR)."""
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


def _read(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_split(split: str) -> list[dict[str, Any]]:
    """Main task rows (train/val/test) in TRL conversational format with ``meta``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    return _read(data_dir() / "main" / f"{split}.jsonl")


def load_self_cognition() -> list[dict[str, Any]]:
    """Self-cognition conversations (meta.split is 'train' or 'eval')."""
    return _read(data_dir() / "self_cognition.jsonl")


def load_probe() -> list[dict[str, Any]]:
    """General-capability probe questions with accepted answers."""
    return _read(data_dir() / "probe_general.jsonl")


def load_replay() -> list[dict[str, Any]]:
    """General replay conversations (user/assistant, no system) to mix into SFT data.

    Mixing them back in counters catastrophic forgetting; they never repeat a probe question.
    """
    return _read(data_dir() / "general_replay.jsonl")


def raw_files() -> list[Path]:
    """The dirty raw files of the main task, in load order (MANIFEST.json excluded)."""
    return sorted(p for p in (data_dir() / "raw").iterdir() if p.name != "MANIFEST.json")


def load_manifest() -> dict[str, Any]:
    """data/raw/MANIFEST.json: what the generator injected into the raw files."""
    return json.loads((data_dir() / "raw" / "MANIFEST.json").read_text(encoding="utf-8"))


class ChecksumError(RuntimeError):
    """A data file is missing or differs from data/SHA256SUMS."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksums(root: str | Path | None = None) -> list[str]:
    """Check every file in data/SHA256SUMS; returns their names or raises naming each bad one."""
    root = Path(root) if root is not None else data_dir()
    sums = root / "SHA256SUMS"
    fix = "rerun `python data/generate.py` from the repository root (it is deterministic)"
    if not sums.exists():
        raise ChecksumError(f"{sums} is missing. Fix: {fix}")
    checked, problems = [], []
    for line in sums.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        path = root / name
        if not path.exists():
            problems.append(f"data/{name} is missing")
            continue
        actual = sha256_file(path)
        if actual != digest:
            problems.append(
                f"data/{name} differs from data/SHA256SUMS "
                f"(expected {digest[:12]}..., got {actual[:12]}...)"
            )
            continue
        checked.append(name)
    if problems:
        raise ChecksumError("; ".join(problems) + f". Fix: {fix}")
    return checked


def parse_answer(text: str) -> dict[str, Any] | None:
    """The model's JSON answer as a dict, or None when it is not a JSON object."""
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def score_answers(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """JSON validity, per-field exact match and all-fields exact match (0..1)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    n = max(1, len(references))
    valid, exact = 0, 0
    per_field = dict.fromkeys(FIELDS, 0)
    for pred, ref in zip(predictions, references, strict=True):
        p, r = parse_answer(pred), json.loads(ref)
        if p is None:
            continue
        valid += 1
        ok = [same_value(p.get(f, "<missing>"), r.get(f)) for f in FIELDS]
        for f, hit in zip(FIELDS, ok, strict=True):
            per_field[f] += hit
        exact += all(ok)
    out = {"json_valid": valid / n, "exact_match": exact / n}
    out.update({f"field_{f}": per_field[f] / n for f in FIELDS})
    return out


def same_value(a: Any, b: Any) -> bool:
    """Field equality as the course scores it: numbers within 1e-6, anything else ==."""
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(a - b) < 1e-6
    return a == b


def messages_without_answer(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The prompt part of a row (all turns but the final assistant answer), for generation."""
    return [dict(m) for m in row["messages"][:-1]]
