"""Will the heavy steps of notebooks 05-06 fit? Memory, disk, and sizes from parameter counts.

Memory is read from this process's cgroup (v2 ``memory.max``/``memory.current``, v1
``memory.limit_in_bytes``/``memory.usage_in_bytes``): inside a Docker container, as on AutoDL,
psutil reports the host's RAM, not the container's limit. Sizes of the merge, the merged
checkpoint and the GGUF files follow from the parameter count. :func:`check_memory` and
:func:`check_output_disk` refuse a step before it starts, saying what to do; the file readers
are arguments, so tests fake them.

    >>> from helpers.profiles import get_profile
    >>> plan_quantize_and_serve(get_profile("24g")).to_frame()  # disk, RAM and VRAM per step
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.env import AUTODL_DATA_DISK, GB, GIB, check_disk, detect_platform, free_disk_gb
from helpers.rehearsal import platform_path
from helpers.vram import DTYPE_BYTES, KNOWN_SHAPES, ModelShape

# Average bits per weight of llama.cpp's file types, file size / parameters. q8_0: blocks of 32
# int8 + one fp16 scale = 8.5. q4_k_m: mostly Q4_K (4.5) with some Q6_K tensors; Qwen2.5's
# published files give 4.9 (7B) and 5.1 (1.5B, larger embedding share): 5.0 is taken.
GGUF_BITS_PER_WEIGHT = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q4_k_m": 5.0}
MERGE_TRANSIENT = 0.10  # of the weights: the adapter, one layer's B@A, logits, loader buffers
MERGE_OVERHEAD = GIB // 2
MEMORY_MARGIN = GIB // 2
SERVER_N_CTX = 2048  # the context each llama.cpp model gets in notebook 06 (serve.backend)
CGROUP_MOUNT = "/sys/fs/cgroup"
UNLIMITED = 1 << 60  # cgroup v1 writes 2**63 rounded to a page for "no limit"
# (limit file, usage file, memory.stat key of reclaimable page cache) per cgroup version
CGROUP_FILES = {
    "v2": ("memory.max", "memory.current", "inactive_file"),
    "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}

Reader = Callable[[str], "str | None"]


class InsufficientMemoryError(MemoryError):
    """Raised before a step that needs more memory than this process may still use."""


# --- memory ---------------------------------------------------------------------------------


def read_text(path: str) -> str | None:
    """A small system file's text, or None when it is missing or unreadable."""
    try:
        return Path(path).read_text()
    except OSError:
        return None


def host_memory() -> tuple[int, int]:
    """(total, available) bytes of the machine's RAM, as the kernel reports them."""
    import psutil

    vm = psutil.virtual_memory()
    return vm.total, vm.available


@dataclass(frozen=True)
class Memory:
    """How much memory this process may still use, and which limit decides it."""

    available: int  # bytes
    total: int  # bytes: the container's limit or the machine's RAM, whichever is smaller
    source: str  # e.g. "cgroup v2 limit /sys/fs/cgroup/memory.max" or "host RAM"


def _number(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None  # v2 writes "max" for no limit


def _stat(text: str | None, key: str) -> int:
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _cgroup_dirs(read: Reader) -> list[tuple[str, str]]:
    """(version, folder) of this process's memory cgroup and each parent up to the mount."""
    found = []
    for line in (read("/proc/self/cgroup") or "").splitlines():
        hierarchy, controllers, rel = (line.strip().split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":
            version, mount = "v2", CGROUP_MOUNT
        elif "memory" in controllers.split(","):
            version, mount = "v1", f"{CGROUP_MOUNT}/memory"
        else:
            continue
        parts = [p for p in rel.split("/") if p]
        # inside a container the mount often *is* its cgroup, so the mount itself is read too
        found += [(version, "/".join([mount, *parts[:i]])) for i in range(len(parts), -1, -1)]
    return found or [("v2", CGROUP_MOUNT), ("v1", f"{CGROUP_MOUNT}/memory")]


def available_memory(
    read: Reader = read_text, host: Callable[[], tuple[int, int]] = host_memory
) -> Memory:
    """Memory this process may still use: the tightest cgroup limit, else the host's RAM."""
    host_total, host_available = host()
    best = Memory(host_available, host_total, "host RAM (no container memory limit)")
    total = host_total
    for version, folder in _cgroup_dirs(read):
        limit_file, usage_file, cache_key = CGROUP_FILES[version]
        limit = _number(read(f"{folder}/{limit_file}"))
        if limit is None or limit >= min(UNLIMITED, host_total):
            continue
        stat = read(f"{folder}/memory.stat")
        cache = _stat(stat, cache_key) or _stat(stat, cache_key.removeprefix("total_"))
        # idle file pages count as usage but are reclaimed before the OOM killer runs
        in_use = max((_number(read(f"{folder}/{usage_file}")) or 0) - cache, 0)
        total = min(total, limit)
        free = max(limit - in_use, 0)
        if free < best.available:
            source = (
                f"cgroup {version} limit {folder}/{limit_file}: {limit / GIB:.1f} GiB, "
                f"{in_use / GIB:.1f} GiB in use"
            )
            best = Memory(free, total, source)
    return Memory(best.available, total, best.source)


def check_memory(
    need_bytes: int, what: str, *, memory: Memory | None = None, platform: str | None = None
) -> Memory:
    """The memory reading; raise InsufficientMemoryError when ``what`` will not fit in it."""
    memory = available_memory() if memory is None else memory
    if memory.available >= need_bytes + MEMORY_MARGIN:
        return memory
    platform = platform or detect_platform()
    message = (
        f"Not enough memory for {what}: it needs about {need_bytes / GIB:.1f} GiB "
        f"(+{MEMORY_MARGIN / GIB:.1f} GiB margin); this process can use "
        f"{memory.available / GIB:.1f} GiB more, of {memory.total / GIB:.1f} GiB "
        f"({memory.source}).\nFix: shut down the kernels of notebooks you are not using (each "
        "keeps its model in memory: Kernel > Shut Down Kernel), restart this one, re-run."
    )
    if platform == "autodl":
        message += (
            " AutoDL gives an instance memory in proportion to its GPUs (the console lists it "
            "per instance): if that is still too little, pick an instance with more memory."
        )
    elif platform == "colab":
        message += " Colab's free runtime has about 12.7 GiB; a high-RAM runtime has more."
    raise InsufficientMemoryError(message)


# --- sizes ----------------------------------------------------------------------------------


def checkpoint_params(folder: str | os.PathLike) -> int:
    """Parameters stored in a checkpoint folder, read from its safetensors headers only."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        return ModelShape.from_config(config).param_counts()["total"]
    if not files:
        raise FileNotFoundError(
            f"{folder} holds no *.safetensors and no config.json. Pass the checkpoint's folder "
            "(the one with config.json), e.g. models.model_path(PROFILE)."
        )
    total = 0
    for file in files:
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))  # a JSON header follows its length
            header = json.loads(handle.read(size))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def checkpoint_bytes(n_params: int, dtype: str) -> int:
    """Bytes of a safetensors checkpoint of ``n_params`` in ``dtype`` (weights only)."""
    return n_params * DTYPE_BYTES[dtype]


def gguf_bytes(n_params: int, kind: str) -> int:
    """Approximate bytes of a GGUF file of ``n_params`` of ``kind`` (f16, q8_0, q4_k_m, ...)."""
    return round(n_params * GGUF_BITS_PER_WEIGHT[kind] / 8)


def merge_bytes(n_params: int, dtype: str) -> int:
    """Memory to merge an adapter into a base held in ``dtype``: weights plus transients."""
    return round(checkpoint_bytes(n_params, dtype) * (1 + MERGE_TRANSIENT)) + MERGE_OVERHEAD


# --- disk -----------------------------------------------------------------------------------


def _disk_fix(path: Path, short_gb: float, platform: str) -> str:
    """What to do when ``path``'s disk is ``short_gb`` too small, for the course's outputs."""
    from helpers.course import OUTPUTS_ENV_VAR, outputs_dir

    outputs = outputs_dir()
    delete = (
        "delete what you no longer need: f16 GGUF files left by earlier runs (`find "
        f"{outputs} -name '*-f16.gguf'`), 03's training checkpoints (`rm -r {outputs}/sft/*/"
        "checkpoint-*`, only needed to resume training), merged models and GGUF files of "
        f"profiles you no longer use (`du -sh {outputs}/*/*` shows them)"
    )
    data_disk = platform_path(AUTODL_DATA_DISK)
    where = path.expanduser().absolute()
    if platform == "autodl" and data_disk not in [where, *where.parents]:
        target = f"{OUTPUTS_ENV_VAR}={os.environ[OUTPUTS_ENV_VAR]} puts outputs there"
        if OUTPUTS_ENV_VAR not in os.environ:
            target = f"{where} was chosen by the caller"
        return (
            f"This is AutoDL's system disk (about 30 GB, shared with the system and the Python "
            f"packages); {target}. Fix: write to the data disk {data_disk}: unset "
            f"{OUTPUTS_ENV_VAR} (outputs then go to the data disk) or point it at a folder "
            f"there, move what is already written (`mv {outputs}/* <new folder>/`), re-run."
        )
    if platform == "autodl":
        return (
            f"Fix: enlarge the data disk by at least {math.ceil(short_gb)} GB (the instance's "
            f"扩容数据盘 in the AutoDL console; it starts at 50 GB), or {delete}. "
            f"`df -h {data_disk}` shows the disk."
        )
    if platform == "colab":
        return f"Fix: {delete}; or free space on Google Drive, which holds the outputs."
    return (
        f"Fix: {delete}; or set {OUTPUTS_ENV_VAR} to a folder on a disk with at least "
        f"{math.ceil(short_gb)} GB more free (`df -h` lists the disks), and re-run."
    )


def check_output_disk(
    path: str | os.PathLike,
    need_bytes: int,
    what: str,
    *,
    platform: str | None = None,
    disk_usage: Callable | None = None,
) -> float:
    """Free GB at ``path``; raise InsufficientDiskError (with the fix) if ``what`` won't fit."""
    path, platform = Path(path), platform or detect_platform()
    usage = {} if disk_usage is None else {"disk_usage": disk_usage}
    short_gb = need_bytes / GB + 1.0 - free_disk_gb(path, **usage)  # check_disk's 1 GB margin
    fix = _disk_fix(path, short_gb, platform) if short_gb > 0 else None
    return check_disk(path, need_bytes / GB, platform, what=what, fix=fix, **usage)


def existing_bytes(*paths: str | os.PathLike) -> int:
    """Bytes the given files already take (they are overwritten, so their space comes back)."""
    return sum(Path(p).stat().st_size for p in paths if Path(p).is_file())


# --- the plan for notebooks 05 and 06 -------------------------------------------------------


@dataclass(frozen=True)
class ResourcePlan:
    """Disk, RAM and VRAM of each heavy step of notebooks 05-06 for one profile."""

    profile: str
    n_params: int
    rows: list[dict[str, Any]]

    @property
    def peak_disk_gb(self) -> float:
        """Most disk in use at once (GB), the model cache included."""
        return max(r["disk_peak_gb"] for r in self.rows)

    @property
    def peak_ram_gib(self) -> float:
        """Most RAM one step needs (GiB)."""
        return max(r["ram_gib"] for r in self.rows)

    @property
    def peak_vram_gib(self) -> float:
        """Most GPU memory one step needs (GiB)."""
        return max(r["vram_gib"] for r in self.rows)

    def to_frame(self):  # -> pandas.DataFrame
        """The steps as a table, one row each, indexed by step."""
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("step").round(2)

    def check(self, outputs: str | os.PathLike | None = None, **kwargs: Any) -> float:
        """Free GB in ``outputs``; raise if 05-06 will not fit there.

        The model cache is on disk already, and what an earlier run wrote to merged/<profile>
        and gguf/<profile> is replaced, so neither is counted again.
        """
        from helpers.course import outputs_dir

        outputs = Path(outputs or outputs_dir())
        earlier = [outputs / part / self.profile for part in ("merged", "gguf")]
        replaced = existing_bytes(*(f for folder in earlier for f in folder.rglob("*")))
        need = round((self.peak_disk_gb - self.rows[0]["disk_written_gb"]) * GB) - replaced
        what = f"notebooks 05-06 on {self.profile} (peak, the model cache aside)"
        return check_output_disk(outputs, max(need, 0), what, **kwargs)


def plan_quantize_and_serve(
    profile: Any, base_dir: str | os.PathLike | None = None, keep_f16: bool = False
) -> ResourcePlan:
    """The heavy steps of 05 (merge, GGUF, compare) and 06 (base GGUF, server) for ``profile``.

    The shape comes from ``base_dir``'s config.json if given, else KNOWN_SHAPES[model_id].
    Disk is in GB and cumulative (the model cache first); RAM and VRAM are per step, in GiB.
    """
    if base_dir is not None:
        shape = ModelShape.from_config(json.loads((Path(base_dir) / "config.json").read_text()))
    elif profile.model_id in KNOWN_SHAPES:
        shape = KNOWN_SHAPES[profile.model_id]
    else:
        raise KeyError(
            f"No known shape for {profile.model_id!r}: pass base_dir=models.model_path(PROFILE)."
        )
    n = shape.param_counts()["total"]
    gpu = profile.device == "cuda"
    save = profile.dtype if gpu else "bfloat16"  # merge_adapter's choice on that hardware
    biggest = max(shape.vocab_size, shape.intermediate_size) * shape.hidden_size
    one_tensor = biggest * (DTYPE_BYTES["float32"] + DTYPE_BYTES["float16"])  # f32 work + out
    merged, f16 = checkpoint_bytes(n, save), gguf_bytes(n, "f16")
    q8, q4 = gguf_bytes(n, "q8_0"), gguf_bytes(n, "q4_k_m")
    kv = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * 2 * SERVER_N_CTX  # f16 K, V
    hf_compare = merge_bytes(n, save if gpu else "float32")  # CPU computes the file in fp32
    if gpu:  # (step, written, freed, ram, vram)
        merge = (f"05 merge ({save}, on the GPU)", merged, 0, one_tensor, merge_bytes(n, save))
        compare = ("05 compare: 16-bit, bitsandbytes on GPU; GGUF on CPU", 0, 0, q8, hf_compare)
    else:
        merge = (f"05 merge (float32, on the CPU), saved {save}", merged, 0, hf_compare, 0)
        compare = ("05 compare: 16-bit (as float32), bitsandbytes, GGUF", 0, 0, hf_compare, 0)
    gguf = "05 GGUF: f16, then q8_0 and q4_k_m" + ("" if keep_f16 else "; f16 deleted")
    steps = [
        ("00-04 model cache (already on disk)", profile.approx_download_gb * GB, 0, 0, 0),
        merge,
        (gguf, f16 + q8 + q4, 0 if keep_f16 else f16, one_tensor, 0),
        compare,
        ("06 base GGUF: f16, then q8_0; f16 deleted", f16 + q8, f16, one_tensor, 0),
        ("06 server: base q8_0 + tuned q4_k_m in llama.cpp", 0, 0, q8 + q4 + 2 * kv, 0),
    ]
    rows, on_disk = [], 0.0
    for step, written, freed, ram, vram in steps:
        peak, on_disk = on_disk + written, on_disk + written - freed
        rows.append(
            {
                "step": step,
                "disk_written_gb": written / GB,
                "disk_freed_gb": freed / GB,
                "disk_peak_gb": peak / GB,
                "disk_after_gb": on_disk / GB,
                "ram_gib": ram / GIB,
                "vram_gib": vram / GIB,
            }
        )
    return ResourcePlan(profile.name, n, rows)


def release_freed_memory() -> None:
    """Hand memory that Python and torch have freed back to the OS (glibc's ``malloc_trim``).

    glibc keeps freed blocks in the process for reuse, so after one training run a second one
    in the same process grows its RSS by far less than it uses: measured here, 1.5 GB of
    freed tensors stayed in the RSS until ``malloc_trim(0)`` returned them. Elsewhere
    (macOS, Windows, musl) there is no such call and nothing happens.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Memory a block adds at its peak, in MB: CUDA's allocator on a GPU, else the RSS growth
    (sampled every 20 ms; ``ru_maxrss`` only grows, so it cannot time one run of many). On a
    CPU the baseline is taken after :func:`release_freed_memory`, so that memory an earlier
    run freed is not silently reused and left out of this block's growth."""

    def __enter__(self):
        import psutil
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        release_freed_memory()
        process = psutil.Process()
        self.base = self.peak = process.memory_info().rss
        self._done = threading.Event()

        def watch():
            while not self._done.wait(0.02):
                self.peak = max(self.peak, process.memory_info().rss)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._done.set()
            self._thread.join()
        self.added_mb = max(self.peak - self.base, 0) / 2**20
