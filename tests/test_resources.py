"""helpers.resources: memory from faked cgroup files, disk checks, sizes, the 05-06 plan, and
PeakMemory on a CPU."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from helpers import env, resources
from helpers.profiles import get_profile
from helpers.resources import PeakMemory
from helpers.vram import KNOWN_SHAPES

GIB = resources.GIB
HOST = (128 * GIB, 100 * GIB)  # what psutil would say inside the container: the host's RAM
DiskUsage = namedtuple("DiskUsage", "total used free")


def files(tree: dict[str, str]):
    """A read_text stand-in over a {path: text} dict; missing files read as None."""
    return tree.get


def disk(free_gb: float):
    """A shutil.disk_usage stand-in reporting ``free_gb``."""
    return lambda path: DiskUsage(500 * env.GB, 0, int(free_gb * env.GB))


@pytest.fixture(autouse=True)
def no_rehearsal(monkeypatch):
    """Real platform paths (/root/autodl-tmp), not a rehearsal sandbox; outputs in one place."""
    monkeypatch.delenv("COURSE_REHEARSAL_ROOT", raising=False)
    monkeypatch.delenv("COURSE_REHEARSAL_DISKS", raising=False)
    monkeypatch.setenv("COURSE_OUTPUTS", "/root/autodl-tmp/llm-course/outputs")


# --- memory ---------------------------------------------------------------------------------


def test_cgroup_v2_limit_is_used_not_the_host_ram():
    tree = {
        "/proc/self/cgroup": "0::/\n",
        "/sys/fs/cgroup/memory.max": f"{32 * GIB}\n",
        "/sys/fs/cgroup/memory.current": f"{20 * GIB}\n",
        "/sys/fs/cgroup/memory.stat": f"anon {15 * GIB}\ninactive_file {4 * GIB}\n",
    }
    memory = resources.available_memory(files(tree), lambda: HOST)
    assert memory.total == 32 * GIB
    assert memory.available == (32 - (20 - 4)) * GIB  # idle page cache is reclaimable
    assert "cgroup v2" in memory.source and "memory.max" in memory.source


def test_cgroup_v2_parent_limit_applies_to_a_nested_cgroup():
    tree = {
        "/proc/self/cgroup": "0::/user.slice/jupyter\n",
        "/sys/fs/cgroup/user.slice/jupyter/memory.max": "max\n",
        "/sys/fs/cgroup/user.slice/memory.max": f"{8 * GIB}\n",
        "/sys/fs/cgroup/user.slice/memory.current": f"{3 * GIB}\n",
    }
    memory = resources.available_memory(files(tree), lambda: HOST)
    assert (memory.total, memory.available) == (8 * GIB, 5 * GIB)
    assert "/sys/fs/cgroup/user.slice/memory.max" in memory.source


def test_cgroup_v1_container_reads_its_own_mount():
    """Docker on cgroup v1: /proc names the host's path, the mount is the container's group."""
    tree = {
        "/proc/self/cgroup": "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": f"{16 * GIB}\n",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes": f"{10 * GIB}\n",
        "/sys/fs/cgroup/memory/memory.stat": f"inactive_file 1\ntotal_inactive_file {2 * GIB}\n",
    }
    memory = resources.available_memory(files(tree), lambda: HOST)
    assert (memory.total, memory.available) == (16 * GIB, 8 * GIB)
    assert "cgroup v1" in memory.source


@pytest.mark.parametrize(
    "tree",
    [
        {"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "max\n"},
        {
            "/proc/self/cgroup": "4:memory:/\n",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        },
        {},  # no cgroup files at all (macOS, Windows)
    ],
    ids=["v2-max", "v1-unlimited", "none"],
)
def test_no_container_limit_falls_back_to_the_host(tree):
    memory = resources.available_memory(files(tree), lambda: HOST)
    assert (memory.total, memory.available) == HOST
    assert memory.source.startswith("host RAM")


def test_check_memory_says_what_where_how_much_and_the_fix():
    memory = resources.Memory(6 * GIB, 32 * GIB, "cgroup v2 limit /sys/fs/cgroup/memory.max")
    assert resources.check_memory(4 * GIB, "x", memory=memory) is memory
    with pytest.raises(resources.InsufficientMemoryError) as info:
        resources.check_memory(30 * GIB, "merging 7B", memory=memory, platform="autodl")
    message = str(info.value)
    assert "merging 7B" in message and "30.0 GiB" in message and "6.0 GiB more" in message
    assert "/sys/fs/cgroup/memory.max" in message
    assert "Shut Down Kernel" in message and "AutoDL" in message


# --- disk -----------------------------------------------------------------------------------


def test_disk_too_small_on_the_autodl_data_disk_names_it_and_the_fix():
    path = "/root/autodl-tmp/llm-course/outputs/gguf/24g"
    with pytest.raises(env.InsufficientDiskError) as info:
        resources.check_output_disk(
            path, 28 * env.GB, "the GGUF export", platform="autodl", disk_usage=disk(20.0)
        )
    message = str(info.value)
    assert f"for the GGUF export at {path}" in message
    assert "20.0 GB free" in message and "28.0 GB needed" in message
    assert "enlarge the data disk by at least 9 GB" in message and "扩容数据盘" in message
    assert "-f16.gguf" in message and "checkpoint-*" in message  # what may be deleted
    assert "configure_caches" not in message  # the download advice does not apply


def test_outputs_on_the_autodl_system_disk_point_at_the_data_disk(monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUTS", "/root/course/outputs")
    with pytest.raises(env.InsufficientDiskError) as info:
        resources.check_output_disk(
            "/root/course/outputs/merged/24g", 15 * env.GB, "the merged model",
            platform="autodl", disk_usage=disk(9.0),
        )  # fmt: skip
    message = str(info.value)
    assert "system disk" in message and "COURSE_OUTPUTS=/root/course/outputs" in message
    assert "/root/autodl-tmp" in message


def test_enough_disk_returns_the_free_space():
    free = resources.check_output_disk("/x", 2 * env.GB, "y", platform="local", disk_usage=disk(5))
    assert free == pytest.approx(5.0)


def test_env_check_disk_stays_backward_compatible():
    """Without ``what``/``fix`` check_disk says what it always said (downloads rely on it)."""
    with pytest.raises(env.InsufficientDiskError) as info:
        env.check_disk("/x", 3.1, "local", disk(0.5))
    assert str(info.value).startswith("Not enough disk space at /x: 0.5 GB free")
    assert "HF_HOME" in str(info.value)


# --- sizes and the plan ---------------------------------------------------------------------


def test_checkpoint_params_reads_the_safetensors_headers(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    assert resources.checkpoint_params(tiny_dir) == model.num_parameters()


def test_checkpoint_params_says_which_folder_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="models.model_path"):
        resources.checkpoint_params(tmp_path)


def test_gguf_sizes_from_bits_per_weight():
    n = KNOWN_SHAPES["Qwen/Qwen2.5-7B-Instruct"].param_counts()["total"]
    assert resources.gguf_bytes(n, "f16") / env.GB == pytest.approx(15.23, abs=0.01)
    assert resources.gguf_bytes(n, "q8_0") / env.GB == pytest.approx(8.09, abs=0.01)
    assert 4.6 < resources.gguf_bytes(n, "q4_k_m") / env.GB < 4.8  # published file: 4.68 GB


def test_24g_plan_does_not_fit_a_default_autodl_data_disk():
    plan = resources.plan_quantize_and_serve(get_profile("24g"))
    assert plan.n_params == KNOWN_SHAPES["Qwen/Qwen2.5-7B-Instruct"].param_counts()["total"]
    assert 66 < plan.peak_disk_gb < 67  # cache 15.2 + merged 15.2 + q8/q4 12.9 + 06's 23.3
    assert plan.peak_vram_gib < 20 and plan.peak_ram_gib < 16  # merged in bf16 on the GPU
    frame = plan.to_frame()
    assert frame["disk_after_gb"].iloc[-1] == pytest.approx(51.3, abs=0.1)
    assert "bfloat16, on the GPU" in frame.index[1]
    with pytest.raises(env.InsufficientDiskError, match="enlarge the data disk"):
        plan.check("/root/autodl-tmp/llm-course/outputs", platform="autodl", disk_usage=disk(50))


def test_keeping_f16_costs_its_size_on_disk():
    lean = resources.plan_quantize_and_serve(get_profile("24g"))
    kept = resources.plan_quantize_and_serve(get_profile("24g"), keep_f16=True)
    f16 = resources.gguf_bytes(lean.n_params, "f16") / env.GB
    assert kept.peak_disk_gb == pytest.approx(lean.peak_disk_gb + f16)


def test_t4_plan_merges_in_fp16_and_fits_colab():
    plan = resources.plan_quantize_and_serve(get_profile("t4"))
    assert "float16, on the GPU" in plan.rows[1]["step"]
    assert plan.peak_disk_gb < 15 and plan.peak_vram_gib < 5


def test_plan_for_a_local_model_needs_its_folder(tiny_dir):
    with pytest.raises(KeyError, match="base_dir"):
        resources.plan_quantize_and_serve(get_profile("tiny"))
    plan = resources.plan_quantize_and_serve(get_profile("tiny"), tiny_dir)
    assert plan.n_params == resources.checkpoint_params(tiny_dir)
    assert "float32, on the CPU" in plan.rows[1]["step"] and plan.peak_vram_gib == 0


def test_plan_check_does_not_count_a_previous_run_twice(tmp_path):
    plan = resources.plan_quantize_and_serve(get_profile("t4"))  # needs ~10.4 GB past the cache
    with pytest.raises(env.InsufficientDiskError, match="10.4 GB needed"):
        plan.check(tmp_path, platform="local", disk_usage=disk(5.0))
    (tmp_path / "gguf" / "t4").mkdir(parents=True)
    with open(tmp_path / "gguf" / "t4" / "model-q8_0.gguf", "wb") as handle:
        handle.truncate(7 * env.GB)  # sparse: takes no real space
    assert plan.check(tmp_path, platform="local", disk_usage=disk(5.0)) == pytest.approx(5.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path: RSS growth")
def test_peak_memory_counts_memory_an_earlier_block_freed():
    def block():  # 4000 x 64 KiB = 250 MiB in blocks small enough for glibc's heap
        blocks = [torch.ones(16, 1024) for _ in range(4000)]
        del blocks

    with PeakMemory() as first:
        block()
    with PeakMemory() as second:  # without malloc_trim it reuses first's freed heap: ~0 MB
        block()
    assert first.added_mb > 200 and second.added_mb > 200, (first.added_mb, second.added_mb)
