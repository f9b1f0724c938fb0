"""Exact and near-duplicate removal (MinHash LSH on character n-grams) and train/test overlap.

    >>> from helpers.data.dedup import deduplicate
    >>> kept, pairs = deduplicate(rows)  # pairs: which row duplicated which, exact or near

Rows are compared on a text key, by default the user turns (two rows asking the same thing
are duplicates even if their answers differ). The exact key drops case, whitespace and
punctuation after NFKC, so punctuation/whitespace variants count as exact duplicates;
near duplicates are found with LSH candidates verified by true Jaccard similarity.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from datasketch import MinHash, MinHashLSH
from tqdm.auto import tqdm

from .validation import EXACT_DUPLICATE, NEAR_DUPLICATE, TEST_OVERLAP, DropReport, start_report

Row = Mapping[str, Any]
KeyFn = Callable[[Row], str]

DEFAULT_THRESHOLD = 0.7
DEFAULT_NGRAM = 3
DEFAULT_NUM_PERM = 128
_PERMS: dict[tuple[int, int], Any] = {}


def user_text(row: Row) -> str:
    """Default dedup key: the user turns joined by newlines."""
    return "\n".join(m["content"] for m in row["messages"] if m["role"] == "user")


def conversation_text(row: Row) -> str:
    """Alternative key: every non-system turn."""
    return "\n".join(m["content"] for m in row["messages"] if m["role"] != "system")


class _DropTable(dict):
    """str.translate table deleting whitespace and punctuation (filled lazily, cached)."""

    def __missing__(self, cp: int) -> int | None:
        ch = chr(cp)
        value = None if ch.isspace() or unicodedata.category(ch).startswith("P") else cp
        self[cp] = value
        return value


_DROP = _DropTable()


def normalize_for_hash(text: str) -> str:
    """NFKC, casefold, and remove whitespace and punctuation."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_DROP)


def _digest(norm: str) -> str:
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).hexdigest()


def exact_key(text: str) -> str:
    """Hex digest of the normalised text."""
    return _digest(normalize_for_hash(text))


def _grams(norm: str, n: int) -> set[str]:
    if len(norm) <= n:
        return {norm}
    return {norm[i : i + n] for i in range(len(norm) - n + 1)}


def shingles(text: str, n: int = DEFAULT_NGRAM) -> set[str]:
    """Character n-grams of the normalised text (the whole text if shorter than n)."""
    return _grams(normalize_for_hash(text), n)


def jaccard(a: set[str], b: set[str]) -> float:
    """Exact Jaccard similarity of two sets."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def make_lsh(threshold: float, num_perm: int = DEFAULT_NUM_PERM) -> MinHashLSH:
    """LSH index tuned below ``threshold`` so true matches are rarely missed (recall ~99%).

    datasketch's S-curve at threshold 0.7 finds only ~44% of pairs with Jaccard 0.7; querying
    at threshold - 0.2 and verifying candidates with exact Jaccard keeps precision and recall.
    """
    return MinHashLSH(num_perm=num_perm, params=_lsh_params(round(threshold, 4), num_perm))


@functools.lru_cache(maxsize=32)
def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) datasketch picks for the lowered threshold; cached (it integrates)."""
    lsh = MinHashLSH(threshold=max(0.05, threshold - 0.2), num_perm=num_perm)
    return lsh.b, lsh.r


def _crc32(data: bytes) -> int:
    return zlib.crc32(data)


def minhash(grams: set[str], num_perm: int = DEFAULT_NUM_PERM, seed: int = 1) -> MinHash:
    """MinHash signature of a shingle set (deterministic across runs and machines)."""
    perms = _PERMS.get((num_perm, seed))
    if perms is None:
        perms = _PERMS[(num_perm, seed)] = MinHash(num_perm=num_perm, seed=seed).permutations
    m = MinHash(
        num_perm=num_perm, seed=seed, hashfunc=_crc32, permutations=perms, scheme="affine32"
    )
    m.update_batch([g.encode("utf-8") for g in sorted(grams)])
    return m


@dataclass(frozen=True)
class DuplicatePair:
    """Row ``dropped`` (index into the input) duplicated row ``kept``."""

    dropped: int
    kept: int
    kind: str  # "exact" or "near"
    similarity: float
    dropped_where: str = ""
    kept_where: str = ""


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: building many small objects otherwise triggers full scans."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _where(row: Row, index: int) -> str:
    src = row.get("source") or {}
    if "file" in src:
        return f"{src['file']}:{src.get('line')}"
    return str(row.get("id", f"#{index}"))


def _drop(report: DropReport, row: Row, reason: str, detail: str, of: str, stage: str) -> None:
    src = row.get("source") or {}
    report.drop(
        str(src.get("file", "<memory>")),
        src.get("line"),
        reason,
        detail,
        stage=stage,
        duplicate_of=of,
    )


def _exact(
    rows: Sequence[Row],
    keys: Sequence[str],
    order: Sequence[int],
    report: DropReport,
    progress: bool,
) -> tuple[list[int], list[DuplicatePair]]:
    first: dict[str, int] = {}
    kept, pairs = [], []
    for i in tqdm(order, desc="exact dedup", disable=not progress, leave=False):
        h = _digest(keys[i])
        j = first.get(h)
        if j is None:
            first[h] = i
            kept.append(i)
            continue
        pair = DuplicatePair(i, j, "exact", 1.0, _where(rows[i], i), _where(rows[j], j))
        pairs.append(pair)
        _drop(report, rows[i], EXACT_DUPLICATE, "same normalised text", pair.kept_where, "dedup")
    return kept, pairs


def _near(
    rows: Sequence[Row],
    keys: Sequence[str],
    order: Sequence[int],
    report: DropReport,
    progress: bool,
    threshold: float,
    ngram: int,
    num_perm: int,
) -> tuple[list[int], list[DuplicatePair]]:
    lsh = make_lsh(threshold, num_perm)
    kept, pairs = [], []
    for i in tqdm(order, desc="near dedup", disable=not progress, leave=False):
        grams = _grams(keys[i], ngram)
        m = minhash(grams, num_perm)
        best, best_sim = -1, 0.0
        for j in sorted(lsh.query(m)):
            sim = jaccard(grams, _grams(keys[j], ngram))  # recomputed: cheaper than storing
            if sim > best_sim:
                best, best_sim = j, sim
        if best >= 0 and best_sim >= threshold:
            pair = DuplicatePair(
                i, best, "near", best_sim, _where(rows[i], i), _where(rows[best], best)
            )
            pairs.append(pair)
            detail = f"Jaccard {best_sim:.2f}"
            _drop(report, rows[i], NEAR_DUPLICATE, detail, pair.kept_where, "dedup")
            continue
        lsh.insert(i, m)
        kept.append(i)
    return kept, pairs


def deduplicate(
    rows: Sequence[Row],
    *,
    key: KeyFn = user_text,
    exact: bool = True,
    near: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    ngram: int = DEFAULT_NGRAM,
    num_perm: int = DEFAULT_NUM_PERM,
    report: DropReport | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[DuplicatePair]]:
    """Exact then near dedup keeping first occurrences; pair indices are positions in ``rows``."""
    rows = list(rows)
    report = start_report(report, len(rows))
    keys = [normalize_for_hash(key(r)) for r in rows]
    order: list[int] = list(range(len(rows)))
    pairs: list[DuplicatePair] = []
    with _gc_paused():
        if exact:
            order, found = _exact(rows, keys, order, report, progress)
            pairs += found
        if near:
            order, found = _near(rows, keys, order, report, progress, threshold, ngram, num_perm)
            pairs += found
    kept = [dict(rows[i]) for i in order]
    report.close(len(kept))
    return kept, pairs


def exact_dedup(
    rows: Sequence[Row],
    *,
    key: KeyFn = user_text,
    report: DropReport | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[DuplicatePair]]:
    """Keep the first row of each normalised-hash group; return kept rows and dropped pairs."""
    return deduplicate(rows, key=key, near=False, report=report, progress=progress)


def near_dedup(
    rows: Sequence[Row],
    *,
    key: KeyFn = user_text,
    threshold: float = DEFAULT_THRESHOLD,
    ngram: int = DEFAULT_NGRAM,
    num_perm: int = DEFAULT_NUM_PERM,
    report: DropReport | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[DuplicatePair]]:
    """Drop rows whose n-gram Jaccard with an earlier kept row is >= threshold (MinHash LSH)."""
    return deduplicate(
        rows,
        key=key,
        exact=False,
        threshold=threshold,
        ngram=ngram,
        num_perm=num_perm,
        report=report,
        progress=progress,
    )


@dataclass(frozen=True)
class Overlap:
    """Train row ``train`` matches test row ``test`` (exact or near)."""

    train: int
    test: int
    kind: str
    similarity: float


def find_overlap(
    train: Sequence[Row],
    test: Sequence[Row],
    *,
    key: KeyFn = user_text,
    threshold: float = DEFAULT_THRESHOLD,
    ngram: int = DEFAULT_NGRAM,
    num_perm: int = DEFAULT_NUM_PERM,
    progress: bool = True,
) -> list[Overlap]:
    """Contamination check: every train row whose key equals or near-matches a test row."""
    exact_test: dict[str, int] = {}
    lsh = make_lsh(threshold, num_perm)
    grams_of: list[set[str]] = []
    for j, row in enumerate(test):
        norm = normalize_for_hash(key(row))
        exact_test.setdefault(_digest(norm), j)
        grams = _grams(norm, ngram)
        grams_of.append(grams)
        lsh.insert(j, minhash(grams, num_perm))
    found: list[Overlap] = []
    for i, row in enumerate(tqdm(train, desc="overlap", disable=not progress, leave=False)):
        norm = normalize_for_hash(key(row))
        j = exact_test.get(_digest(norm))
        if j is not None:
            found.append(Overlap(i, j, "exact", 1.0))
            continue
        grams = _grams(norm, ngram)
        best, best_sim = -1, 0.0
        for j in sorted(lsh.query(minhash(grams, num_perm))):
            sim = jaccard(grams, grams_of[j])
            if sim > best_sim:
                best, best_sim = j, sim
        if best >= 0 and best_sim >= threshold:
            found.append(Overlap(i, best, "near", best_sim))
    return found


def decontaminate(
    train: Sequence[Row],
    test: Sequence[Row],
    *,
    report: DropReport | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], list[Overlap]]:
    """Remove train rows that overlap the test set; returns kept rows and the overlaps."""
    train = list(train)
    report = start_report(report, len(train))
    overlaps = find_overlap(train, test, progress=progress, **kwargs)
    hit = {o.train: o for o in overlaps}
    kept = []
    for i, row in enumerate(train):
        o = hit.get(i)
        if o is None:
            kept.append(dict(row))
            continue
        detail = f"{o.kind} match, Jaccard {o.similarity:.2f}"
        _drop(report, row, TEST_OVERLAP, detail, _where(test[o.test], o.test), "decontaminate")
    report.close(len(kept))
    return kept, overlaps
