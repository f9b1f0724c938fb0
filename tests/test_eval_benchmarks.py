"""Unit tests for helpers.evaluation.benchmarks; lm_eval, the GPU and the network are all faked."""

from __future__ import annotations

import sys
import types

import pytest
from fakes import RecordingProbe

from helpers import env
from helpers.evaluation import benchmarks

GPU = env.GpuInfo("NVIDIA GeForce RTX 4090", 23.6, (8, 9), True)


def fake_results(tasks, limit):
    """What lm_eval.simple_evaluate returns, trimmed to the keys the summary reads."""
    metrics = {
        "ceval-valid_computer_network": (0.4210526315789474, 0.11637279966159299, 19),
        "cmmlu_computer_science": (0.56, 0.07091242083423346, 204),
    }
    return {
        "results": {
            task: {
                "alias": task,
                "acc,none": acc,
                "acc_stderr,none": stderr,
                "acc_norm,none": acc,
                "acc_norm_stderr,none": "N/A",
            }
            for task, (acc, stderr, _) in metrics.items()
            if task in tasks
        },
        "n-samples": {
            task: {"original": total, "effective": total if limit is None else min(total, limit)}
            for task, (_, _, total) in metrics.items()
            if task in tasks
        },
        "n-shot": {task: 0 for task in tasks},
        "config": {"model": "hf", "limit": limit},
    }


@pytest.fixture(autouse=True)
def isolated(monkeypatch, no_network):
    """No real network, no hub settings from the machine, and a GPU unless a test removes it."""
    monkeypatch.setattr(env, "probe_url", RecordingProbe())  # reached only through env.probe_url
    for var in ("COURSE_HUB", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(env, "gpu_info", lambda: GPU)


@pytest.fixture
def fake_lm_eval(monkeypatch):
    """An lm_eval module whose simple_evaluate records its kwargs and returns fake_results."""
    module = types.ModuleType("lm_eval")
    module.calls = []

    def simple_evaluate(**kwargs):
        module.calls.append(kwargs)
        return fake_results(kwargs["tasks"], kwargs["limit"])

    module.simple_evaluate = simple_evaluate
    monkeypatch.setitem(sys.modules, "lm_eval", module)
    return module


@pytest.mark.parametrize(
    "environ",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_DATASETS_OFFLINE": "true"}, {"COURSE_HUB": "offline"}],
)
def test_offline_skips_without_probing(fake_lm_eval, environ):
    probe = RecordingProbe(env.HF_ENDPOINT_DEFAULT)
    ok, reason = benchmarks.benchmark_status(environ=environ, probe=probe)
    assert not ok
    assert "offline" in reason and reason.startswith(benchmarks.SKIP)
    assert probe.urls == []


def test_run_benchmarks_offline_returns_skipped(fake_lm_eval, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = benchmarks.run_benchmarks("Qwen/Qwen2.5-0.5B-Instruct")
    assert result["skipped"] is True
    assert "HF_HUB_OFFLINE=1" in result["reason"]
    assert result["reason"] in capsys.readouterr().out
    assert fake_lm_eval.calls == []
    assert env.probe_url.urls == []


def test_missing_lm_eval_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    result = benchmarks.run_benchmarks("model", hub_ok=True)
    assert result == {"skipped": True, "reason": benchmarks.INSTALL_HINT}
    assert "pip install -e '.[bench]'" in result["reason"]


def test_no_gpu_skips(fake_lm_eval, monkeypatch):
    monkeypatch.setattr(env, "gpu_info", lambda: None)
    result = benchmarks.run_benchmarks("model", hub_ok=True)
    assert result["skipped"] is True
    assert "no CUDA GPU" in result["reason"] and "hours" in result["reason"]
    assert fake_lm_eval.calls == []


def test_unreachable_hub_probes_the_endpoint_and_suggests_the_mirror(fake_lm_eval):
    probe = RecordingProbe()
    ok, reason = benchmarks.benchmark_status(environ={}, probe=probe)
    assert not ok
    assert probe.urls == [env.HF_ENDPOINT_DEFAULT]
    assert f"HF_ENDPOINT={env.HF_MIRROR_ENDPOINT}" in reason
    assert "ceval/ceval-exam" in reason and "haonan-li/cmmlu" in reason


def test_probe_follows_hf_endpoint(fake_lm_eval):
    probe = RecordingProbe(env.HF_MIRROR_ENDPOINT)
    environ = {"HF_ENDPOINT": env.HF_MIRROR_ENDPOINT + "/"}
    ok, message = benchmarks.benchmark_status(environ=environ, probe=probe)
    assert ok, message
    assert probe.urls == [env.HF_MIRROR_ENDPOINT]
    assert env.HF_MIRROR_ENDPOINT in message


def test_happy_path_passes_lm_eval_args_and_summarizes(fake_lm_eval):
    env.probe_url.reachable.add(env.HF_ENDPOINT_DEFAULT)
    result = benchmarks.run_benchmarks(
        "/models/qwen", adapter_path="outputs/adapter", limit=50, num_fewshot=5, batch_size=4
    )
    assert env.probe_url.urls == [env.HF_ENDPOINT_DEFAULT]
    (call,) = fake_lm_eval.calls
    assert call["model"] == "hf"
    args = dict(part.split("=", 1) for part in call["model_args"].split(","))
    assert args == {"pretrained": "/models/qwen", "peft": "outputs/adapter", "dtype": "auto"}
    assert call["tasks"] == list(benchmarks.DEFAULT_TASKS)
    assert (call["limit"], call["num_fewshot"], call["batch_size"]) == (50, 5, 4)
    assert call["device"] == "cuda"

    assert result["skipped"] is False
    assert (result["limit"], result["num_fewshot"]) == (50, 5)
    assert result["adapter"] == "outputs/adapter"
    assert result["tasks"] == {
        "ceval-valid_computer_network": {
            "acc": pytest.approx(8 / 19),
            "acc_stderr": pytest.approx(0.1163728),
            "n": 19,
        },
        "cmmlu_computer_science": {
            "acc": pytest.approx(0.56),
            "acc_stderr": pytest.approx(0.0709124),
            "n": 50,
        },
    }


def test_without_adapter_there_is_no_peft_arg(fake_lm_eval):
    result = benchmarks.run_benchmarks(
        "base", tasks=("cmmlu_computer_science",), limit=None, hub_ok=True
    )
    (call,) = fake_lm_eval.calls
    assert "peft=" not in call["model_args"]
    assert call["model_args"].startswith("pretrained=base,")
    assert result["adapter"] is None
    assert list(result["tasks"]) == ["cmmlu_computer_science"]


def test_summarize_reads_n_a_stderr_as_none():
    results = {"results": {"t": {"acc,none": 1, "acc_stderr,none": "N/A", "sample_len": 3}}}
    assert benchmarks.summarize(results, ["t"]) == {"t": {"acc": 1.0, "acc_stderr": None, "n": 3}}


def test_default_tasks_are_ceval_and_cmmlu_subjects():
    prefixes = {task.split("_", 1)[0] for task in benchmarks.DEFAULT_TASKS}
    assert prefixes == set(benchmarks.DATASET_REPOS)
