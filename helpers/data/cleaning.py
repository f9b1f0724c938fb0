"""Text normalisation, answer/length filters and PII masking for chat rows.

    >>> from helpers.data.cleaning import mask_pii
    >>> mask_pii("电话 13812345678，邮箱 a.b@example.com")
    ('电话 [PHONE]，邮箱 [EMAIL]', Counter({'phone': 1, 'email': 1}))

NFKC also folds full-width ASCII variants (，！？：０-９ become ,!?:0-9); that is usually what
you want for matching and de-duplication, but it does change how Chinese text looks.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from tqdm.auto import tqdm

from .validation import EMPTY_ANSWER, TOO_LONG, TOO_SHORT, DropReport, start_report, where

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_HSPACE = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NL = re.compile(r" *\n *")
_MANY_NL = re.compile(r"\n{3,}")

ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK_CHARS = "10X98765432"

PII_PATTERNS: dict[str, re.Pattern[str]] = {
    # 18-digit resident ID: area(6) birth date(8) sequence(3) check digit or X.
    "id_card": re.compile(
        r"(?<!\d)[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
        r"(?![\dXx])"
    ),
    # Mainland mobile: optional +86, 1[3-9]x then 8 digits, optional '-' or ' ' groups 3-4-4.
    "phone": re.compile(r"(?<!\d)(?:\+?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}(?!\d)"),
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
}
PII_TOKENS = {"id_card": "[ID_CARD]", "phone": "[PHONE]", "email": "[EMAIL]"}


def normalize_text(text: str, form: str | None = "NFKC", collapse_spaces: bool = True) -> str:
    """Unicode-normalise, drop zero-width chars, unify newlines, squeeze blank space, strip."""
    if form:
        text = unicodedata.normalize(form, text)
    text = text.translate(_ZERO_WIDTH).replace("\r\n", "\n").replace("\r", "\n")
    if collapse_spaces:
        text = _HSPACE.sub(" ", text)
        text = _SPACE_AROUND_NL.sub("\n", text)
        text = _MANY_NL.sub("\n\n", text)
    return text.strip()


def id_card_check_char(first17: str) -> str:
    """Check character (0-9 or X) of a Chinese resident ID from its first 17 digits."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("need exactly 17 digits")
    return ID_CHECK_CHARS[sum(int(d) * w for d, w in zip(first17, ID_WEIGHTS, strict=True)) % 11]


def is_valid_id_card(number: str) -> bool:
    """True when an 18-character ID number has the right format and check character."""
    n = number.upper()
    return bool(PII_PATTERNS["id_card"].fullmatch(n)) and id_card_check_char(n[:17]) == n[17]


def find_pii(text: str) -> dict[str, list[str]]:
    """All PII matches per kind (ID cards first, so their digits are not read as phones)."""
    found: dict[str, list[str]] = {}
    for kind, pattern in PII_PATTERNS.items():
        hits = pattern.findall(text)
        if hits:
            found[kind] = hits
        text = pattern.sub(PII_TOKENS[kind], text)
    return found


def mask_pii(text: str) -> tuple[str, Counter]:
    """Replace phones, e-mails and ID numbers by [PHONE]/[EMAIL]/[ID_CARD]; count per kind."""
    counts: Counter = Counter()
    for kind, pattern in PII_PATTERNS.items():
        text, n = pattern.subn(PII_TOKENS[kind], text)
        if n:
            counts[kind] += n
    return text, counts


def set_system_prompt(messages: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    """Return messages whose first turn is exactly one system turn with ``prompt``."""
    rest = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": prompt}, *rest]


def conversation_chars(messages: Iterable[Mapping[str, Any]]) -> int:
    """Characters in the non-system turns (the system prompt is usually fixed)."""
    return sum(len(m["content"]) for m in messages if m["role"] != "system")


def clean_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    report: DropReport | None = None,
    normalize: bool = True,
    mask: bool = True,
    system_prompt: str | None = None,
    min_answer_chars: int = 2,
    max_chars: int | None = 2000,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], DropReport, Counter]:
    """Normalise text, drop empty/short answers and overlong rows, mask PII in kept rows.

    Returns (kept rows, report, PII counts per kind). Lengths are in characters; token
    limits need the tokenizer and come later.
    """
    rows = list(rows)
    report = start_report(report, len(rows))
    pii: Counter = Counter()
    kept: list[dict[str, Any]] = []
    for row in tqdm(rows, desc="clean", unit=" rows", disable=not progress, leave=False):
        file, line = where(row)
        messages = [dict(m) for m in row["messages"]]
        if normalize:
            for m in messages:
                m["content"] = normalize_text(m["content"])
        if system_prompt is not None:
            messages = set_system_prompt(messages, system_prompt)
        problem = None
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            if not m["content"].strip():
                problem = (EMPTY_ANSWER, "answer is empty or whitespace", f"messages[{i}].content")
            elif len(m["content"].strip()) < min_answer_chars:
                detail = f"{len(m['content'].strip())} chars < min_answer_chars={min_answer_chars}"
                problem = (TOO_SHORT, detail, f"messages[{i}].content")
            if problem:
                break
        if problem is None and max_chars is not None:
            n = conversation_chars(messages)
            if n > max_chars:
                problem = (TOO_LONG, f"{n} chars > max_chars={max_chars}", "messages")
        if problem is not None:
            report.drop(file, line, problem[0], problem[1], field=problem[2], stage="clean")
            continue
        if mask:
            for m in messages:
                m["content"], counts = mask_pii(m["content"])
                pii.update(counts)
        out = dict(row)
        out["messages"] = messages
        kept.append(out)
    report.close(len(kept))
    return kept, report, pii
