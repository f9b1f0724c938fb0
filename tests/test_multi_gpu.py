"""Notebook 11 on 2 CPU processes (gloo): DDP equals gradient accumulation, the checkpointing
failure and its fixes, FSDP on CPU refused loudly; the accelerate configs as accelerate and
DeepSpeed read them. The launches take ~2 minutes on 2 cores (each process imports torch)."""

from __future__ import annotations

import pytest

from helpers import multi_gpu
from helpers.profiles import get_profile
from helpers.sft import sft_config

# 3 optimizer steps of 4 samples: as 1 process x 2 micro-batches or 2 processes x 1
COMMON = ["--profile", "tiny", "--max-steps", "3", "--per-device-batch-size", "2"]
COMMON += ["--eval-rows", "0", "--no-checkpoints"]
# float32 on CPU; only the order of the gradient sums differs (measured 4.5e-7 on 2 cores)
TOLERANCE = 1e-5
READY_TWICE = "Expected to mark a variable ready only once"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, gradient accumulation 2."""
    out = tmp_path_factory.mktemp("one-process")
    run = multi_gpu.torchrun(
        1, [*COMMON, "--output-dir", str(out), "--gradient-accumulation-steps", "2"]
    )
    assert run.returncode == 0, run.output[-3000:]
    assert run.summary["world_size"] == 1 and run.summary["effective_batch"] == 4
    return out


def _ddp(tmp_path, *extra):
    return multi_gpu.torchrun(2, [*COMMON, "--output-dir", str(tmp_path), *extra])


def test_ddp_over_two_ranks_equals_gradient_accumulation(reference, tmp_path):
    # checkpointing on, non-reentrant (transformers 5's default): the fix, in the same run
    run = _ddp(tmp_path, "--activation-checkpointing")
    assert run.returncode == 0, run.output[-3000:]
    assert run.summary["world_size"] == 2 and run.summary["backend"] == "gloo"
    assert run.summary["effective_batch"] == 4
    diff = multi_gpu.adapter_max_diff(reference / "adapter", tmp_path / "adapter")
    print(f"DDP vs accumulation: max |dW| = {diff:.2e} ({run.seconds:.0f} s)")
    assert diff <= TOLERANCE


def test_reentrant_checkpointing_fails_under_ddp_and_find_unused_false_fixes_it(
    reference, tmp_path
):
    failed = _ddp(tmp_path / "fails", "--activation-checkpointing", "--reentrant")
    assert failed.returncode != 0 and READY_TWICE in failed.output, failed.output[-3000:]
    # reentrant kept, but DDP told that every LoRA weight is used (no unused-parameter search)
    fixed = _ddp(
        tmp_path / "fixed",
        "--activation-checkpointing",
        "--reentrant",
        "--set",
        "ddp_find_unused_parameters=false",
    )
    assert fixed.returncode == 0, fixed.output[-3000:]
    diff = multi_gpu.adapter_max_diff(reference / "adapter", tmp_path / "fixed" / "adapter")
    assert diff <= TOLERANCE


def test_fsdp_on_cpu_processes_is_refused_not_silently_ddp(tmp_path):
    run = _ddp(tmp_path, "--set", "fsdp=full_shard", "--set", 'fsdp_config={"version": 2}')
    assert run.returncode != 0
    assert "FSDP was asked for but accelerate set up" in run.output, run.output[-3000:]


# ---------------------------------------------------------------------------- configs


def test_every_config_is_commented_and_accepted_by_accelerate():
    names = sorted(p.stem for p in multi_gpu.CONFIG_DIR.glob("*.yaml"))
    assert names == ["ddp", "fsdp2_qlora", "zero2", "zero3_offload"]
    for name in names:
        path = multi_gpu.CONFIG_DIR / f"{name}.yaml"
        comments = [line for line in path.read_text().splitlines() if "#" in line]
        assert len(comments) >= 5, f"{name}.yaml explains itself in comments"
        args, env = multi_gpu.launch_env(path)
        assert args.num_processes == 2


def test_fsdp2_config_builds_an_fsdp2_plugin():
    plugin = multi_gpu.fsdp_plugin(multi_gpu.CONFIG_DIR / "fsdp2_qlora.yaml")
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    _, env = multi_gpu.launch_env(multi_gpu.CONFIG_DIR / "fsdp2_qlora.yaml")
    assert env["ACCELERATE_USE_FSDP"] == "true"  # helpers.models then stores NF4 as bf16


@pytest.mark.parametrize(
    ("name", "stage", "offload"), [("zero2", 2, "none"), ("zero3_offload", 3, "cpu")]
)
def test_deepspeed_configs_pass_deepspeed_own_parser(name, stage, offload, tmp_path):
    args = sft_config(
        get_profile("tiny"), tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=4
    )
    config = multi_gpu.deepspeed_config(
        multi_gpu.CONFIG_DIR / f"{name}.yaml", args, hidden_size=3584
    )
    assert config["gradient_accumulation_steps"] == 4  # "auto" took the Trainer's value
    parsed = multi_gpu.parse_with_deepspeed(config)
    assert parsed.zero_optimization_stage == stage
    device = parsed.zero_config.offload_optimizer.device
    assert getattr(device, "value", device) == offload
    config["zero_optimization"]["ofload_param"] = {"device": "cpu"}  # a typo must not pass
    with pytest.raises(Exception, match="ofload_param"):
        multi_gpu.parse_with_deepspeed(config)


def test_a_config_with_an_unknown_key_fails_as_accelerate_launch_would(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((multi_gpu.CONFIG_DIR / "ddp.yaml").read_text() + "num_gpus: 2\n")
    with pytest.raises(ValueError, match="unknown keys"):
        multi_gpu.launch_env(bad)
