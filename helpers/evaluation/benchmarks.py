"""Optional public benchmarks: a small C-Eval / CMMLU subset through lm-evaluation-harness.

The benchmark needs the ``bench`` extra, a CUDA GPU and the Hugging Face hub (or a mirror set
with HF_ENDPOINT) for the datasets. When any of these is missing it is skipped with a reason,
never an exception, so the notebook runs offline and on CPU too.

    >>> from helpers.evaluation.benchmarks import run_benchmarks
    >>> result = run_benchmarks("Qwen/Qwen2.5-0.5B-Instruct", adapter_path="outputs/adapter")
    >>> pandas.DataFrame.from_dict(result["tasks"], orient="index")  # acc, acc_stderr, n
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from helpers import env

# One C-Eval and one CMMLU subject the course's assistant should know something about.
# C-Eval tasks read the validation split of the hub dataset ceval/ceval-exam,
# CMMLU tasks the test split of haonan-li/cmmlu (dataset_path in the lm_eval task YAMLs).
DEFAULT_TASKS = ("ceval-valid_computer_network", "cmmlu_computer_science")
DATASET_REPOS = {"ceval-valid": "ceval/ceval-exam", "cmmlu": "haonan-li/cmmlu"}

SKIP = "跳过基准评测 / Benchmark skipped: "
INSTALL_HINT = (
    SKIP + "lm-evaluation-harness (lm_eval) is not installed. "
    "Fix: run `pip install -e '.[bench]'` in the course folder, then restart the kernel."
)
NO_GPU = (
    SKIP + "no CUDA GPU. C-Eval / CMMLU score every answer choice with the full model; "
    "on a CPU even this small subset would take hours. Run this cell on a GPU machine."
)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in env._TRUE_VALUES


def dataset_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The hub the datasets library downloads from: HF_ENDPOINT, else huggingface.co."""
    environ = os.environ if environ is None else environ
    return (environ.get("HF_ENDPOINT") or env.HF_ENDPOINT_DEFAULT).rstrip("/")


def _hub_reason(environ: Mapping[str, str], probe: Callable[[str], bool]) -> str | None:
    """Why the dataset hub cannot be used, or None when it can; no socket when offline."""
    offline_vars = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if environ.get(env.HUB_ENV_VAR, "").strip().lower() == "offline" or any(
        _truthy(environ.get(var)) for var in offline_vars
    ):
        return (
            SKIP + "offline mode (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1 or "
            f"{env.HUB_ENV_VAR}=offline is set), and the C-Eval / CMMLU datasets come from the "
            "hub. Unset it on a machine with internet to run the benchmark."
        )
    endpoint = dataset_endpoint(environ)
    if probe(endpoint):
        return None
    return (
        SKIP + f"the dataset hub {endpoint} is unreachable (offline?). The datasets "
        f"{', '.join(DATASET_REPOS.values())} are downloaded from it. In mainland China set "
        f"HF_ENDPOINT={env.HF_MIRROR_ENDPOINT} before starting Jupyter (the datasets library "
        "reads it once, at import), then restart the kernel."
    )


def benchmark_status(
    hub_ok: bool | None = None,
    environ: Mapping[str, str] | None = None,
    probe: Callable[[str], bool] | None = None,
) -> tuple[bool, str]:
    """(True, what is ready) with lm_eval, a CUDA GPU and the dataset hub, else (False, why not)."""
    environ = os.environ if environ is None else environ
    try:
        import lm_eval  # noqa: F401  (lazy: importing it loads no model and no dataset)
    except ImportError:
        return False, INSTALL_HINT
    if env.gpu_info() is None:
        return False, NO_GPU
    if hub_ok is None:
        reason = _hub_reason(environ, probe or env.probe_url)
    else:
        reason = None if hub_ok else SKIP + "the dataset hub is not reachable (hub_ok=False)."
    if reason is not None:
        return False, reason
    return True, f"ready: lm_eval, a CUDA GPU, datasets from {dataset_endpoint(environ)}"


def _number(value: Any) -> float | None:
    """A metric as a float; lm_eval writes 'N/A' for a stderr it could not compute."""
    return float(value) if isinstance(value, int | float) else None


def summarize(results: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per task: accuracy, its standard error and the number of questions scored."""
    summary = {}
    for task in tasks:
        metrics = results["results"][task]
        counts = results.get("n-samples", {}).get(task, {})
        summary[task] = {
            "acc": _number(metrics.get("acc,none")),
            "acc_stderr": _number(metrics.get("acc_stderr,none")),
            "n": counts.get("effective", metrics.get("sample_len")),
        }
    return summary


def run_benchmarks(
    model_path: str | os.PathLike,
    adapter_path: str | os.PathLike | None = None,
    tasks: Sequence[str] = DEFAULT_TASKS,
    limit: int | None = 50,
    num_fewshot: int = 0,
    batch_size: int = 8,
    hub_ok: bool | None = None,
) -> dict[str, Any]:
    """Score the model (plus LoRA adapter) on ``tasks``; ``{"skipped": True, ...}`` if it cannot."""
    ok, reason = benchmark_status(hub_ok)
    if not ok:
        print(reason)
        return {"skipped": True, "reason": reason}
    import lm_eval

    model_args = f"pretrained={model_path},dtype=auto"
    if adapter_path is not None:
        model_args += f",peft={adapter_path}"
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        device="cuda",
        log_samples=False,
    )
    return {
        "skipped": False,
        "model": str(model_path),
        "adapter": None if adapter_path is None else str(adapter_path),
        "tasks": summarize(results, tasks),
        "limit": limit,
        "num_fewshot": num_fewshot,
    }
