"""Evaluation (notebook 04): task metrics, perplexity, token-level bad cases, forgetting.

One submodule per concern; the names the notebooks use are re-exported here.

- ``generation``: batched greedy generation, the held-out sets, ``behaviour_report``
- ``metrics``: perplexity, character ROUGE-L, probe matching, per-row scores, AUROC
- ``tokens``: teacher forcing: per-token probabilities, bad-case table, coloured view
- ``uncertainty``: confidence of generated answers vs their correctness
- ``forgetting``: few-shot general probe, before/after delta table, case classification
- ``diagnostics``: slices with bootstrap intervals, JSON-prefix probe, bad-case taxonomy,
  over-said values, eval channels, loss levels
- ``compare``: base vs fine-tuned side by side, diff highlighting, ipywidgets browser
- ``results``: the results file that notebook 05 appends to
- ``benchmarks``: optional C-Eval/CMMLU subset through lm-evaluation-harness (GPU + internet)

    >>> from helpers import evaluation
    >>> report = evaluation.behaviour_report(model, tokenizer, profile)  # JSON fields + identity
"""

from helpers.evaluation.benchmarks import benchmark_status, run_benchmarks
from helpers.evaluation.compare import case_browser, case_html, diff_html, side_by_side
from helpers.evaluation.diagnostics import (
    SLICES,
    TAXONOMY,
    bootstrap_ci,
    channel_rows,
    intent_losses,
    loss_levels,
    prefix_probe,
    probe_intervals,
    slice_table,
    taxonomy,
    value_bias,
)
from helpers.evaluation.forgetting import (
    fewshot_prompt,
    forgetting_cases,
    forgetting_table,
    probe_report,
)
from helpers.evaluation.generation import (
    DECODING,
    behaviour_report,
    eval_sets,
    generate_batch,
    names_assistant,
    prompt_messages,
    stored_or_measured,
)
from helpers.evaluation.metrics import auroc, perplexity, probe_hit, rouge_l_chars, row_scores
from helpers.evaluation.results import (
    CORE_METRICS,
    load_results,
    record_variant,
    results_frame,
    results_path,
    start_results,
)
from helpers.evaluation.tokens import (
    TokenScores,
    bad_case_table,
    legend_html,
    render_token_scores,
    score_tokens,
    set_perplexity,
)
from helpers.evaluation.uncertainty import confidence_frame, confidence_summary, plot_confidence

__all__ = [
    "CORE_METRICS",
    "DECODING",
    "SLICES",
    "TAXONOMY",
    "TokenScores",
    "auroc",
    "bad_case_table",
    "behaviour_report",
    "benchmark_status",
    "bootstrap_ci",
    "case_browser",
    "case_html",
    "channel_rows",
    "confidence_frame",
    "confidence_summary",
    "diff_html",
    "eval_sets",
    "fewshot_prompt",
    "forgetting_cases",
    "forgetting_table",
    "generate_batch",
    "intent_losses",
    "legend_html",
    "load_results",
    "loss_levels",
    "names_assistant",
    "perplexity",
    "plot_confidence",
    "prefix_probe",
    "probe_hit",
    "probe_intervals",
    "probe_report",
    "prompt_messages",
    "record_variant",
    "render_token_scores",
    "results_frame",
    "results_path",
    "rouge_l_chars",
    "row_scores",
    "run_benchmarks",
    "score_tokens",
    "set_perplexity",
    "side_by_side",
    "slice_table",
    "start_results",
    "stored_or_measured",
    "taxonomy",
    "value_bias",
]
