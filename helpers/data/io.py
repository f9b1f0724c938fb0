"""Load chat datasets in any common layout, normalised to TRL's ``{"messages": [...]}``; export.

    >>> from helpers.data.io import load_conversations
    >>> rows, report = load_conversations("data/raw/sharegpt.jsonl")  # report lists every drop

Layouts are detected per row, so one file may mix them: OpenAI/TRL ``messages``, ShareGPT
``conversations`` (from/value), Alpaca (instruction/input/output, optional system and history)
and ``prompt``/``completion`` (strings or TRL conversational lists). Files may be JSONL, JSON
(an array), CSV or parquet. Plain text has no roles and is read by :func:`load_text` instead.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .validation import (
    EMPTY_FILE,
    EMPTY_MESSAGES,
    LAST_NOT_ASSISTANT,
    LINE_TOO_LONG,
    MALFORMED_CSV,
    MALFORMED_JSON,
    MISSING_FIELD,
    NOT_CONVERSATIONAL,
    NOT_UTF8,
    UNKNOWN_FORMAT,
    WRONG_TYPE,
    DataError,
    DropReport,
    validate_messages,
)

FORMATS = ("openai_chat", "sharegpt", "alpaca", "prompt_completion", "text")
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
}
MAX_LINE_BYTES = 1_000_000
_JSON_COLUMNS = ("messages", "conversations", "history", "prompt", "completion")
_SURROGATE = re.compile("[\udc80-\udcff]")

Record = tuple[int, Any]  # (line or item number, parsed object or DataError)


def detect_format(record: Mapping[str, Any]) -> str | None:
    """Name the layout of one parsed record (see FORMATS), or None when unknown."""
    keys = set(record)
    if "messages" in keys:
        return "openai_chat"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys or {"input", "output"} <= keys:
        return "alpaca"
    if "prompt" in keys or "completion" in keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    return None


def _text_of(value: Any, field: str) -> str:
    """Content as a string; accepts OpenAI content-part lists of text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, Mapping) and "text" in p for p in value):
        return "".join(str(p["text"]) for p in value)
    raise DataError(WRONG_TYPE, f"got {type(value).__name__}, expected str", field=field)


def _require(record: Mapping[str, Any], key: str) -> Any:
    if key not in record or record[key] is None:
        raise DataError(MISSING_FIELD, f"no {key!r} in record", field=key)
    return record[key]


def _turns(items: Any, field: str, role_key: str, content_key: str) -> list[dict[str, Any]]:
    """Normalise a list of turns, mapping role aliases; unknown roles are kept for validation."""
    if not isinstance(items, list):
        raise DataError(WRONG_TYPE, f"got {type(items).__name__}, expected list", field=field)
    out: list[dict[str, Any]] = []
    for i, turn in enumerate(items):
        if not isinstance(turn, Mapping):
            raise DataError(WRONG_TYPE, f"got {type(turn).__name__}", field=f"{field}[{i}]")
        rk = role_key if role_key in turn else ("role" if "role" in turn else role_key)
        ck = content_key if content_key in turn else ("content" if "content" in turn else None)
        if rk not in turn:
            raise DataError(MISSING_FIELD, "turn has no role", field=f"{field}[{i}].{role_key}")
        if ck is None:
            raise DataError(
                MISSING_FIELD, "turn has no content", field=f"{field}[{i}].{content_key}"
            )
        role = turn[rk]
        role = ROLE_ALIASES.get(role.lower(), role) if isinstance(role, str) else role
        content = turn[ck]
        if content is not None and not isinstance(content, str):
            content = _text_of(content, f"{field}[{i}].{ck}")
        out.append({"role": role, "content": content})
    return out


def to_messages(record: Any, fmt: str | None = None) -> list[dict[str, Any]]:
    """Convert one record of any supported layout to a validated ``messages`` list."""
    if not isinstance(record, Mapping):
        raise DataError(
            WRONG_TYPE, f"row is {type(record).__name__}, expected a JSON object", field="<row>"
        )
    fmt = fmt or detect_format(record)
    if fmt is None:
        raise DataError(UNKNOWN_FORMAT, f"keys {sorted(map(str, record))}")
    if fmt == "text":
        raise DataError(NOT_CONVERSATIONAL, "row has only 'text'", field="text")
    if fmt == "openai_chat":
        messages = _turns(_require(record, "messages"), "messages", "role", "content")
    elif fmt == "sharegpt":
        messages = _turns(_require(record, "conversations"), "conversations", "from", "value")
        if not messages:
            raise DataError(EMPTY_MESSAGES, "conversations list is empty", field="conversations")
        if isinstance(record.get("system"), str) and record["system"].strip():
            messages.insert(0, {"role": "system", "content": record["system"]})
    elif fmt == "alpaca":
        instruction = _text_of(_require(record, "instruction"), "instruction")
        inp = record.get("input") or ""
        inp = _text_of(inp, "input")
        output = _text_of(_require(record, "output"), "output")
        messages = []
        if isinstance(record.get("system"), str) and record["system"].strip():
            messages.append({"role": "system", "content": record["system"]})
        history = record.get("history") or []
        if not isinstance(history, list):
            detail = "history must be a list of [query, answer]"
            raise DataError(WRONG_TYPE, detail, field="history")
        for i, pair in enumerate(history):
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                raise DataError(WRONG_TYPE, "expected [query, answer]", field=f"history[{i}]")
            messages.append({"role": "user", "content": _text_of(pair[0], f"history[{i}][0]")})
            messages.append({"role": "assistant", "content": _text_of(pair[1], f"history[{i}][1]")})
        user = f"{instruction}\n{inp}" if inp.strip() else instruction
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    elif fmt == "prompt_completion":
        prompt, completion = _require(record, "prompt"), _require(record, "completion")
        if isinstance(prompt, list):
            messages = _turns(prompt, "prompt", "role", "content")
            messages += _turns(completion, "completion", "role", "content")
        else:
            messages = [
                {"role": "user", "content": _text_of(prompt, "prompt")},
                {"role": "assistant", "content": _text_of(completion, "completion")},
            ]
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    try:
        validate_messages(messages)
    except DataError as err:
        raise _source_field(err, fmt, record, messages) from None
    return messages


_TURN_FIELD = re.compile(r"^messages\[(\d+)\]")


def _source_field(err: DataError, fmt: str, record: Mapping[str, Any], messages: list) -> DataError:
    """Rename ``messages[i]`` in an error to the field as spelled in the source record."""
    m = _TURN_FIELD.match(err.field or "")
    if m is None or fmt not in ("sharegpt", "prompt_completion"):
        return err
    i = int(m.group(1))
    if fmt == "sharegpt":
        has_top_system = len(messages) > len(record["conversations"])
        name, j = "conversations", i - int(has_top_system)
        rest = err.field[m.end() :].replace(".role", ".from").replace(".content", ".value")
    elif isinstance(record.get("prompt"), list):
        n = len(record["prompt"])
        name, j = ("prompt", i) if i < n else ("completion", i - n)
        rest = err.field[m.end() :]
    else:
        return err
    if j < 0:
        return err
    field = f"{name}[{j}]{rest}"
    return DataError(err.reason, err.detail, file=err.file, line=err.line, field=field, fix=err.fix)


def _jsonl_records(path: Path, report: DropReport, max_line_bytes: int) -> Iterator[Record]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
                report.warn(f"{path}: UTF-8 BOM removed")
            if not raw.strip():
                continue
            if len(raw) > max_line_bytes:
                yield (
                    lineno,
                    DataError(
                        LINE_TOO_LONG, f"{len(raw):,} bytes > max_line_bytes={max_line_bytes:,}"
                    ),
                )
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = raw[e.start : e.start + 4]
                yield lineno, DataError(NOT_UTF8, f"invalid byte {bad!r} at byte {e.start}")
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, DataError(MALFORMED_JSON, f"{e.msg} at column {e.colno}")


def _decode_whole(path: Path, report: DropReport) -> str | DataError:
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
        report.warn(f"{path}: UTF-8 BOM removed")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return DataError(NOT_UTF8, f"invalid byte {raw[e.start : e.start + 4]!r} on line {line}")


def _json_records(path: Path, report: DropReport) -> Iterator[Record]:
    text = _decode_whole(path, report)
    if isinstance(text, DataError):
        yield 1, text
        return
    if not text.strip():
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        # A broken JSON array cannot be split reliably: the whole file is one lost unit.
        yield e.lineno, DataError(MALFORMED_JSON, f"{e.msg} at column {e.colno}; whole file lost")
        return
    items = obj if isinstance(obj, list) else [obj]
    yield from enumerate(items, 1)


def _csv_records(path: Path, report: DropReport) -> Iterator[Record]:
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
        report.warn(f"{path}: UTF-8 BOM removed")
    text = raw.decode("utf-8", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    reader.fieldnames  # noqa: B018 - reads the header so line_num points past it
    prev_end = reader.line_num
    for row in reader:
        start, prev_end = prev_end + 1, reader.line_num
        if not any((v or "").strip() for k, v in row.items() if k is not None):
            continue
        if None in row or any(v is None for v in row.values()):
            n = len(reader.fieldnames or [])
            yield start, DataError(MALFORMED_CSV, f"row does not have the header's {n} columns")
            continue
        if any(_SURROGATE.search(v) for v in row.values()):
            yield start, DataError(NOT_UTF8, "row contains bytes that are not UTF-8")
            continue
        rec: dict[str, Any] = dict(row)
        error = None
        for col in _JSON_COLUMNS:
            value = rec.get(col)
            if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
                try:
                    rec[col] = json.loads(value)
                except json.JSONDecodeError as e:
                    error = DataError(MALFORMED_JSON, f"column {col}: {e.msg}", field=col)
        yield start, (error if error is not None else rec)


def _parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    yield from enumerate(pq.read_table(path).to_pylist(), 1)


def iter_records(
    path: str | Path, *, report: DropReport | None = None, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[Record]:
    """Yield ``(line, record)`` from JSONL/JSON/CSV/parquet; a record that failed is a DataError."""
    path = Path(path)
    report = report if report is not None else DropReport()
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_records(path, report, max_line_bytes)
    elif suffix == ".json":
        yield from _json_records(path, report)
    elif suffix in (".csv", ".tsv"):
        yield from _csv_records(path, report)
    elif suffix == ".parquet":
        yield from _parquet_records(path)
    elif suffix in (".txt", ".md"):
        raise DataError(NOT_CONVERSATIONAL, "plain text file", file=str(path))
    else:
        raise ValueError(f"{path}: unsupported extension {suffix!r} (jsonl/json/csv/parquet)")


def _normalise(record: Any, file: str, line: int | None) -> dict[str, Any]:
    fmt = detect_format(record) if isinstance(record, Mapping) else None
    try:
        messages = to_messages(record, fmt)
    except DataError as err:
        raise err.located(file, line) from None
    row: dict[str, Any] = {"messages": messages}
    if record.get("id") not in (None, ""):
        row["id"] = str(record["id"])
    if isinstance(record.get("meta"), Mapping):
        row["meta"] = dict(record["meta"])
    row["source"] = {"file": file, "line": line, "format": fmt}
    return row


def from_records(
    records: Iterable[Any],
    *,
    name: str = "<memory>",
    report: DropReport | None = None,
    strict: bool = False,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], DropReport]:
    """Normalise in-memory records (e.g. a ``datasets.Dataset``) like :func:`load_conversations`."""
    report = report if report is not None else DropReport()
    prior_kept = report.kept_count or 0
    rows: list[dict[str, Any]] = []
    bar = tqdm(records, desc=name, unit=" rows", disable=not progress, leave=False)
    for i, rec in enumerate(bar, 1):
        report.add_input()
        try:
            row = _normalise(rec, name, i)
        except DataError as err:
            if strict:
                raise
            report.drop_error(err, stage="load")
            continue
        report.formats[row["source"]["format"]] += 1
        rows.append(row)
    report.close(prior_kept + len(rows))
    return rows, report


def load_conversations(
    paths: str | Path | Iterable[str | Path],
    *,
    strict: bool = False,
    report: DropReport | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], DropReport]:
    """Read files into ``{"messages", "source"[, "id", "meta"]}`` rows plus a DropReport.

    ``strict=True`` raises the first :class:`DataError` (with file, line, field and fix)
    instead of recording a drop.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    report = report if report is not None else DropReport()
    prior_kept = report.kept_count or 0
    rows: list[dict[str, Any]] = []
    for path in paths:
        path = Path(path)
        file = str(path)
        before = report.input_count
        try:
            records = iter_records(path, report=report, max_line_bytes=max_line_bytes)
            bar = tqdm(records, desc=path.name, unit=" rows", disable=not progress, leave=False)
            for line, rec in bar:
                report.add_input()
                try:
                    if isinstance(rec, DataError):
                        raise rec.located(file, line)
                    row = _normalise(rec, file, line)
                except DataError as err:
                    if strict:
                        raise
                    report.drop_error(err, stage="load")
                    continue
                report.formats[row["source"]["format"]] += 1
                rows.append(row)
        except DataError as err:
            if strict or err.reason != NOT_CONVERSATIONAL:
                raise
            report.add_input()
            report.drop_error(err, stage="load")
        if report.input_count == before:
            err = DataError(EMPTY_FILE, "no records", file=file)
            if strict:
                raise err
            report.warn(str(err))
    report.close(prior_kept + len(rows))
    return rows, report


def load_text(path: str | Path) -> list[dict[str, str]]:
    """Plain-text corpus as TRL language-modeling rows ``{"text": paragraph}``."""
    text = Path(path).read_text(encoding="utf-8-sig")
    return [{"text": p.strip()} for p in re.split(r"\n\s*\n", text) if p.strip()]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a clean JSONL file (raises with the line number on the first bad line)."""
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(MALFORMED_JSON, e.msg, file=str(path), line=lineno) from None
    return rows


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write rows as UTF-8 JSONL (ensure_ascii=False, '\\n' newlines); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def export_openai_chat(rows: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write OpenAI fine-tuning JSONL: one ``{"messages": [...]}`` per line, nothing else."""
    return write_jsonl(
        (
            {"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]}
            for r in rows
        ),
        path,
    )


def to_prompt_completion(row: Mapping[str, Any], conversational: bool = False) -> dict[str, Any]:
    """Split a conversation before its last assistant turn into prompt and completion.

    With ``conversational=False`` the prompt is the earlier turns' text joined by blank lines
    (multi-turn structure is lost); with True both sides stay TRL message lists.
    """
    messages = row["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(LAST_NOT_ASSISTANT, "last turn must be the assistant's")
    prompt, completion = messages[:-1], messages[-1]
    if conversational:
        return {"prompt": [dict(m) for m in prompt], "completion": [dict(completion)]}
    text = "\n\n".join(m["content"] for m in prompt)
    return {"prompt": text, "completion": completion["content"]}


def export_prompt_completion(
    rows: Iterable[Mapping[str, Any]], path: str | Path, conversational: bool = False
) -> int:
    """Write ``{"prompt", "completion"}`` JSONL (see :func:`to_prompt_completion`)."""
    return write_jsonl((to_prompt_completion(r, conversational) for r in rows), path)
