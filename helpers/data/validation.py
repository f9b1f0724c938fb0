"""Structural checks for chat rows, with errors that say where and how to fix, and a drop ledger.

    >>> from helpers.data.validation import validate_messages
    >>> validate_messages([{"role": "user", "content": "hi"}])  # raises DataError:
    <data>, field 'messages[0]': last_not_assistant (last turn is 'user'). Fix: end each ...

Every stage of the pipeline records what it removes in one :class:`DropReport`; the report
checks ``input + added == kept + dropped`` whenever a stage closes it, so no row is ever lost
silently (``added`` is non-zero only after up-sampling).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# Drop reasons (stable strings: data/raw/MANIFEST.json and the tests use them).
MALFORMED_JSON = "malformed_json"
MALFORMED_CSV = "malformed_csv"
NOT_UTF8 = "not_utf8"
LINE_TOO_LONG = "line_too_long"
EMPTY_FILE = "empty_file"
UNKNOWN_FORMAT = "unknown_format"
NOT_CONVERSATIONAL = "not_conversational"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_MESSAGES = "empty_messages"
BAD_ROLE = "bad_role"
ROLES_OUT_OF_ORDER = "roles_out_of_order"
LAST_NOT_ASSISTANT = "last_not_assistant"
EMPTY_ANSWER = "empty_answer"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
TEST_OVERLAP = "test_overlap"
DOWNSAMPLED = "downsampled"

ROLES = ("system", "user", "assistant")

FIXES: dict[str, str] = {
    MALFORMED_JSON: "fix the JSON syntax on that line (one complete JSON object per JSONL line)",
    MALFORMED_CSV: "make every CSV row have the header's number of columns (quote commas)",
    NOT_UTF8: "re-save the file as UTF-8, e.g. `iconv -f GBK -t UTF-8 in > out`",
    LINE_TOO_LONG: "split or drop the record; raise max_line_bytes only if it is intended",
    EMPTY_FILE: "check the export step that wrote this file; it contains no records",
    UNKNOWN_FORMAT: "use one layout: messages | conversations | instruction/input/output | "
    "prompt/completion",
    NOT_CONVERSATIONAL: "plain-text rows have no roles; load them with load_text()",
    MISSING_FIELD: "add the missing field (see the field name above)",
    WRONG_TYPE: "store the field with the expected type; answers are strings "
    "(json.dumps(obj, ensure_ascii=False) for JSON answers)",
    EMPTY_MESSAGES: "drop the row or fill in the conversation",
    BAD_ROLE: "map the role to one of system/user/assistant",
    ROLES_OUT_OF_ORDER: "order turns as [system], user, assistant, user, assistant, ...",
    LAST_NOT_ASSISTANT: "end each training conversation with the assistant answer to learn",
    EMPTY_ANSWER: "write the answer or drop the row",
    TOO_SHORT: "write a real answer or drop the row",
    TOO_LONG: "shorten the sample or raise max_chars if long samples are intended",
    EXACT_DUPLICATE: "nothing to fix: the first copy is kept",
    NEAR_DUPLICATE: "nothing to fix: the first copy is kept",
    TEST_OVERLAP: "nothing to fix: the row leaked from the test set and is removed from train",
    DOWNSAMPLED: "nothing to fix: removed to balance labels",
}


class DataError(ValueError):
    """A data problem that names file, line, field, what is wrong and how to fix it."""

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.file = file
        self.line = line
        self.field = field
        self.fix = fix if fix is not None else FIXES.get(reason, "")
        super().__init__(str(self))

    def located(self, file: str | None, line: int | None) -> DataError:
        """Return a copy with file and line filled in (keeps the original field and fix)."""
        return DataError(
            self.reason, self.detail, file=file, line=line, field=self.field, fix=self.fix
        )

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field:
            where.append(f"field '{self.field}'")
        head = ", ".join(where) or "<data>"
        text = f"{head}: {self.reason}"
        if self.detail:
            text += f" ({self.detail})"
        if self.fix:
            text += f". Fix: {self.fix}"
        return text


@dataclass(frozen=True)
class Drop:
    """One removed row: where it came from, why, and (for duplicates) what it duplicated."""

    file: str
    line: int | None
    reason: str
    detail: str = ""
    field: str | None = None
    stage: str = ""
    duplicate_of: str | None = None

    @property
    def where(self) -> str:
        """Location as ``file:line``."""
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass
class DropReport:
    """Ledger of every dropped row; ``verify`` asserts input + added == kept + dropped."""

    input_count: int = 0
    added_count: int = 0
    kept_count: int | None = None
    drops: list[Drop] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    formats: Counter = field(default_factory=Counter)

    def add_input(self, n: int = 1) -> None:
        """Count rows entering the pipeline."""
        self.input_count += n

    def drop(
        self,
        file: str,
        line: int | None,
        reason: str,
        detail: str = "",
        *,
        field: str | None = None,
        stage: str = "",
        duplicate_of: str | None = None,
    ) -> None:
        """Record one dropped row."""
        self.drops.append(Drop(file, line, reason, detail, field, stage, duplicate_of))

    def drop_error(self, err: DataError, stage: str = "") -> None:
        """Record a :class:`DataError` as a dropped row."""
        self.drop(
            err.file or "<memory>", err.line, err.reason, err.detail, field=err.field, stage=stage
        )

    def warn(self, message: str) -> None:
        """Record a problem that did not cost a row (BOM removed, empty file, ...)."""
        self.warnings.append(message)

    @property
    def dropped_count(self) -> int:
        """Number of dropped rows."""
        return len(self.drops)

    def close(self, kept: int) -> None:
        """Set the number of rows kept after a stage and check the invariant."""
        self.kept_count = kept
        self.verify()

    def verify(self) -> None:
        """Raise AssertionError unless input + added == kept + dropped."""
        if self.kept_count is None:
            raise AssertionError("DropReport.verify() before close(kept)")
        if self.input_count + self.added_count != self.kept_count + self.dropped_count:
            raise AssertionError(
                f"row ledger broken: input {self.input_count} + added {self.added_count} != "
                f"kept {self.kept_count} + dropped {self.dropped_count}"
            )

    def counts(self) -> dict[str, int]:
        """Dropped rows per reason, most frequent first."""
        return dict(Counter(d.reason for d in self.drops).most_common())

    def by_reason(self, reason: str) -> list[Drop]:
        """All drops with one reason."""
        return [d for d in self.drops if d.reason == reason]

    def to_dataframe(self) -> Any:
        """Every drop as a pandas DataFrame (one row per dropped sample)."""
        import pandas as pd

        cols = ["file", "line", "reason", "detail", "field", "stage", "duplicate_of"]
        return pd.DataFrame([asdict(d) for d in self.drops], columns=cols)

    def summary(self) -> str:
        """A short plain-text table: input, dropped per reason, kept."""
        counts = self.counts()
        w = max([18, *(len(r) + 4 for r in counts)])
        lines = [f"{'input rows':<{w}}{self.input_count:>7}"]
        if self.added_count:
            lines.append(f"{'added (upsampled)':<{w}}{self.added_count:>7}")
        lines.extend(f"{'  - ' + reason:<{w}}{n:>7}" for reason, n in counts.items())
        lines.append(f"{'dropped':<{w}}{self.dropped_count:>7}")
        kept = "?" if self.kept_count is None else self.kept_count
        lines.append(f"{'kept':<{w}}{kept:>7}")
        lines.extend(f"warning: {w_}" for w_ in self.warnings)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _check_turn(i: int, turn: Any) -> str:
    """Validate one turn and return its role."""
    if not isinstance(turn, Mapping):
        raise DataError(
            WRONG_TYPE, f"got {type(turn).__name__}, expected object", field=f"messages[{i}]"
        )
    if "role" not in turn:
        raise DataError(MISSING_FIELD, "turn has no role", field=f"messages[{i}].role")
    if "content" not in turn:
        raise DataError(MISSING_FIELD, "turn has no content", field=f"messages[{i}].content")
    role, content = turn["role"], turn["content"]
    if not isinstance(role, str):
        raise DataError(WRONG_TYPE, f"role is {type(role).__name__}", field=f"messages[{i}].role")
    if role not in ROLES:
        raise DataError(BAD_ROLE, f"role {role!r}", field=f"messages[{i}].role")
    if not isinstance(content, str):
        raise DataError(
            WRONG_TYPE,
            f"content is {type(content).__name__}, expected str",
            field=f"messages[{i}].content",
        )
    return role


def validate_messages(messages: Any) -> None:
    """Raise :class:`DataError` unless ``messages`` is a well-formed training conversation."""
    if not isinstance(messages, list):
        raise DataError(
            WRONG_TYPE, f"got {type(messages).__name__}, expected list", field="messages"
        )
    if not messages:
        raise DataError(EMPTY_MESSAGES, "messages list is empty", field="messages")
    roles = [_check_turn(i, t) for i, t in enumerate(messages)]
    start = 1 if roles[0] == "system" else 0
    if start == len(roles):
        raise DataError(LAST_NOT_ASSISTANT, "only a system turn", field="messages")
    for i in range(start, len(roles)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if roles[i] != expected:
            raise DataError(
                ROLES_OUT_OF_ORDER,
                f"expected {expected!r}, got {roles[i]!r}",
                field=f"messages[{i}].role",
            )
    if roles[-1] != "assistant":
        raise DataError(
            LAST_NOT_ASSISTANT, f"last turn is {roles[-1]!r}", field=f"messages[{len(roles) - 1}]"
        )


def start_report(report: DropReport | None, n_rows: int) -> DropReport:
    """Continue ``report`` (rows already counted) or open a new one with ``n_rows`` input rows."""
    return report if report is not None else DropReport(input_count=n_rows)


def where(row: Mapping[str, Any]) -> tuple[str, int | None]:
    """(file, line) a row was loaded from, or ('<memory>', index-less None)."""
    src = row.get("source") or {}
    return str(src.get("file", "<memory>")), src.get("line")


def validate_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    report: DropReport | None = None,
    strict: bool = False,
) -> tuple[list[dict[str, Any]], DropReport]:
    """Keep rows whose ``messages`` validate; drop (or, if strict, raise on) the rest."""
    rows = list(rows)
    report = start_report(report, len(rows))
    kept: list[dict[str, Any]] = []
    for row in rows:
        file, line = where(row)
        try:
            if "messages" not in row:
                raise DataError(MISSING_FIELD, "row has no messages", field="messages")
            validate_messages(row["messages"])
        except DataError as err:
            err = err.located(file, line)
            if strict:
                raise err from None
            report.drop_error(err, stage="validate")
            continue
        kept.append(dict(row))
    report.close(len(kept))
    return kept, report
