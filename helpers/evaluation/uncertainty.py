"""How sure was the model, and does that predict whether it was right?

Score the model's own generated answers by teacher forcing (``tokens.score_tokens``): the mean
token log-probability and mean entropy of each answer are its confidence. If low confidence
goes with wrong answers (AUROC well above 0.5), a deployment can route unsure answers to a
human instead of returning them.

    >>> frame = confidence_frame(scores, correct)
    >>> summary = confidence_summary(frame)  # AUROC, accuracy of the most confident half
    >>> plot_confidence(frame)
"""

from __future__ import annotations

from collections.abc import Sequence

from helpers.evaluation.metrics import auroc
from helpers.evaluation.tokens import TokenScores


def confidence_frame(scores: Sequence[TokenScores], correct: Sequence[bool]):
    """id, mean log-prob, mean entropy and correctness per generated answer."""
    import pandas as pd

    return pd.DataFrame(
        {
            "id": [s.id for s in scores],
            "mean_logprob": [s.mean_logprob for s in scores],
            "mean_entropy": [s.mean_entropy for s in scores],
            "correct": list(correct),
        }
    )


def confidence_summary(frame) -> dict[str, float | None]:
    """AUROC of each confidence signal for telling right from wrong, and selective accuracy."""
    ranked = frame.sort_values("mean_logprob", ascending=False, kind="stable")
    half = ranked.head(max(1, len(ranked) // 2))
    return {
        "answers": len(frame),
        "accuracy": float(frame["correct"].mean()),
        "auroc_logprob": auroc(frame["mean_logprob"].tolist(), frame["correct"].tolist()),
        "auroc_neg_entropy": auroc((-frame["mean_entropy"]).tolist(), frame["correct"].tolist()),
        "accuracy_most_confident_half": float(half["correct"].mean()),
    }


def plot_confidence(frame, title: str = "confidence vs correctness"):
    """Left: log-prob vs entropy, coloured by correctness. Right: accuracy vs coverage."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ok, colour, label in ((True, "tab:green", "correct"), (False, "tab:red", "wrong")):
        part = frame[frame["correct"] == ok]
        left.scatter(part["mean_logprob"], part["mean_entropy"], s=14, c=colour, label=label)
    left.set(xlabel="mean token log-prob", ylabel="mean entropy (nats)", title=title)
    left.legend()
    ranked = frame.sort_values("mean_logprob", ascending=False, kind="stable")["correct"]
    n = range(1, len(ranked) + 1)
    right.plot([k / len(ranked) for k in n], ranked.cumsum().to_numpy() / list(n))
    right.axhline(frame["correct"].mean(), ls="--", c="grey", label="answer everything")
    right.set(
        xlabel="coverage (most confident share answered)",
        ylabel="accuracy",
        ylim=(-0.02, 1.02),
        title="answer only when confident",
    )
    right.legend()
    fig.tight_layout()
    return fig
