"""Diversity metrics that expose over-templated data: distinct-n, nearest-neighbour Jaccard, and
template clusters.

    >>> from helpers.data.diversity import diversity_report
    >>> diversity_report(["我的快递到哪了", "退款什么时候到账"])["distinct_2"]
    1.0

``mean_nn_jaccard`` is the mean, over a sample of texts, of each text's highest character
n-gram Jaccard similarity to any other text. It only sees near-copies: rows of one template
with different greetings, slots and tails score ~0.4 and look "diverse". ``template_clusters``
sees the template instead: slot values (order ids, numbers) are masked, the texts become
character n-gram TF-IDF vectors and average-linkage clustering on cosine distance groups
rows that share a frame. ``over_templated`` is set when most rows sit in large clusters.
Clustering is exact on a sample of at most ``sample`` texts (a dense n x n distance matrix).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .dedup import DEFAULT_NGRAM, shingles

OVER_TEMPLATED_NN = 0.5  # the dashed line in plot_diversity: near-copies above it
TEMPLATE_DISTANCE = 0.8  # cosine distance under which average-linkage merges two clusters
BIG_CLUSTER = 5  # a cluster with at least this many rows is a repeated frame (a template)
OVER_TEMPLATED_SHARE = 0.5  # flag when more rows than this sit in big clusters
SLOT_PATTERNS = (  # slot values differ between rows of one template: compare the frames
    (re.compile(r"dd\d{10}", re.IGNORECASE), "Ⓞ"),
    (re.compile(r"\d+(?:\.\d+)?"), "Ⓝ"),
)


def _units(text: str, unit: str) -> list[str]:
    return text.split() if unit == "word" else [c for c in text if not c.isspace()]


def distinct_n(texts: Sequence[str], n: int, unit: str = "char") -> float:
    """Unique n-grams / all n-grams over the corpus (unit 'char' for Chinese, 'word' for en)."""
    total, seen = 0, set()
    for t in texts:
        u = _units(t, unit)
        grams = [tuple(u[i : i + n]) for i in range(len(u) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def nearest_neighbor_similarity(
    texts: Sequence[str], ngram: int = DEFAULT_NGRAM, chunk: int = 512, progress: bool = True
) -> np.ndarray:
    """Each text's highest n-gram Jaccard with any other text (exact, sparse matrix product)."""
    from scipy import sparse

    if len(texts) < 2:
        return np.zeros(len(texts))
    vocab: dict[str, int] = {}
    indptr, indices = [0], []
    for t in texts:
        indices.extend(vocab.setdefault(g, len(vocab)) for g in sorted(shingles(t, ngram)))
        indptr.append(len(indices))
    x = sparse.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(texts), len(vocab))
    )
    sizes = np.asarray(x.sum(axis=1)).ravel()
    best = np.zeros(len(texts))
    for s in tqdm(
        range(0, len(texts), chunk), desc="nn similarity", disable=not progress, leave=False
    ):
        inter = (x[s : s + chunk] @ x.T).toarray()
        union = sizes[s : s + chunk, None] + sizes[None, :] - inter
        sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        rows = np.arange(sim.shape[0])
        sim[rows, rows + s] = -1.0  # ignore self
        best[s : s + chunk] = sim.max(axis=1)
    return best


def template_frame(text: str) -> str:
    """Lower-cased text with order ids and numbers replaced by one placeholder each."""
    text = text.lower()
    for pattern, mark in SLOT_PATTERNS:
        text = pattern.sub(mark, text)
    return text


def tfidf_matrix(texts: Sequence[str], ngram: int = DEFAULT_NGRAM) -> Any:
    """L2-normalised character n-gram TF-IDF rows as a scipy CSR matrix.

    The smooth idf of scikit-learn's TfidfVectorizer, written out because scikit-learn is not a
    course dependency and this is all the course needs from it.
    """
    from scipy import sparse

    vocab: dict[str, int] = {}
    indptr, indices, values = [0], [], []
    for t in texts:
        grams = Counter(t[i : i + ngram] for i in range(max(1, len(t) - ngram + 1)))
        for gram, count in grams.items():
            indices.append(vocab.setdefault(gram, len(vocab)))
            values.append(float(count))
        indptr.append(len(indices))
    x = sparse.csr_matrix((values, indices, indptr), shape=(len(texts), len(vocab)))
    df = np.bincount(x.indices, minlength=len(vocab))
    x = x.multiply(np.log((1 + len(texts)) / (1 + df)) + 1).tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
    return sparse.diags(1 / np.maximum(norms, 1e-12)) @ x


def template_clusters(
    texts: Sequence[str], *, max_distance: float = TEMPLATE_DISTANCE, ngram: int = DEFAULT_NGRAM
) -> np.ndarray:
    """A cluster id per text: average-linkage clusters of TF-IDF cosine distance on the frames."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if len(texts) < 2:
        return np.ones(len(texts), dtype=int)
    x = tfidf_matrix([template_frame(t) for t in texts], ngram)
    dist = np.clip(1.0 - (x @ x.T).toarray(), 0.0, None)  # (n, n) cosine distances
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(dist, checks=False), method="average")
    return fcluster(tree, max_distance, criterion="distance")


def adjusted_rand_index(pred: Sequence[Any], truth: Sequence[Any]) -> float:
    """Adjusted Rand index of two labelings (1 = identical partitions, ~0 = chance)."""
    from scipy.special import comb

    pairs = Counter(zip(pred, truth, strict=True))
    same_both = sum(comb(c, 2) for c in pairs.values())
    same_pred = sum(comb(c, 2) for c in Counter(pred).values())
    same_truth = sum(comb(c, 2) for c in Counter(truth).values())
    expected = same_pred * same_truth / comb(len(pred), 2) if len(pred) > 1 else 0.0
    top = (same_pred + same_truth) / 2 - expected
    return float((same_both - expected) / top) if top else 1.0


def purity(pred: Sequence[Any], truth: Sequence[Any]) -> float:
    """Share of rows whose cluster's most common true label is their own."""
    best: dict[Any, int] = {}
    for (cluster, _), count in Counter(zip(pred, truth, strict=True)).items():
        best[cluster] = max(best.get(cluster, 0), count)
    return sum(best.values()) / len(pred) if len(pred) else 0.0


def cluster_table(texts: Sequence[str], clusters: Sequence[int], top: int = 10) -> Any:
    """DataFrame of the largest clusters: rows and one example text each."""
    import pandas as pd

    df = pd.DataFrame({"cluster": list(clusters), "text": list(texts)})
    sizes = df.groupby("cluster")["text"].agg(rows="size", example="first")
    return sizes.sort_values("rows", ascending=False).head(top)


def diversity_report(
    texts: Sequence[str],
    *,
    sample: int = 2000,
    seed: int = 0,
    ngram: int = DEFAULT_NGRAM,
    unit: str = "char",
    progress: bool = False,
) -> dict[str, Any]:
    """distinct-1/2/3, NN Jaccard and template clusters on a sample, an ``over_templated`` flag."""
    texts = list(texts)
    picked = texts if len(texts) <= sample else random.Random(seed).sample(texts, sample)
    nn = nearest_neighbor_similarity(picked, ngram, progress=progress)
    mean_nn = float(nn.mean()) if len(nn) else 0.0
    sizes = Counter(template_clusters(picked, ngram=ngram).tolist())
    in_big = sum(c for c in sizes.values() if c >= BIG_CLUSTER) / max(1, len(picked))
    return {
        "n": len(texts),
        "distinct_1": distinct_n(texts, 1, unit),
        "distinct_2": distinct_n(texts, 2, unit),
        "distinct_3": distinct_n(texts, 3, unit),
        "mean_nn_jaccard": mean_nn,
        "median_nn_jaccard": float(np.median(nn)) if len(nn) else 0.0,
        "share_nn_above_0.5": float((nn > 0.5).mean()) if len(nn) else 0.0,
        "clusters": len(sizes),
        "share_in_big_clusters": in_big,
        "over_templated": in_big > OVER_TEMPLATED_SHARE,
        "top_4grams": Counter(
            t[i : i + 4] for t in texts for i in range(max(0, len(t) - 3))
        ).most_common(5),
    }


def plot_diversity(reports: Mapping[str, Mapping[str, Any]], ax: Any = None) -> Any:
    """Grouped bars of distinct-1/2/3 and mean NN Jaccard for several datasets; returns Axes."""
    import matplotlib.pyplot as plt

    metrics = ["distinct_1", "distinct_2", "distinct_3", "mean_nn_jaccard"]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(reports))
    for k, (name, rep) in enumerate(reports.items()):
        xs = [i + k * width for i in range(len(metrics))]
        ax.bar(xs, [rep[m] for m in metrics], width=width, label=name)
    ax.set_xticks([i + width * (len(reports) - 1) / 2 for i in range(len(metrics))], metrics)
    ax.axhline(OVER_TEMPLATED_NN, ls="--", c="gray", lw=1)
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("diversity (dashed: over-templated NN threshold)")
    return ax
