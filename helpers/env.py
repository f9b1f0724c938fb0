"""Environment helpers: which machine this is, which model hub to use, where caches go.

Learners run the course on Colab (T4), AutoDL (3090/4090, a ~30 GB system disk plus a data disk
at /root/autodl-tmp) or their own machine, often where huggingface.co is unreachable. This module
picks a reachable hub (Hugging Face, hf-mirror.com or ModelScope), keeps caches off small disks,
checks free space before a download, and finds models that are already on disk.

    >>> from helpers.env import detect_platform
    >>> detect_platform(environ={"COLAB_RELEASE_TAG": "release-colab-20250101"})
    'colab'
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform as _platform
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from helpers.cpu import usable_cpus
from helpers.rehearsal import disk_usage as _disk_usage
from helpers.rehearsal import platform_path

GIB = 1024**3  # memory (VRAM, RAM) is reported in GiB
GB = 1000**3  # disk and download sizes in GB, as hub pages and `df -H` show them

PLATFORMS = ("colab", "autodl", "local")
AUTODL_DATA_DISK = "/root/autodl-tmp"
COLAB_DRIVE = "/content/drive/MyDrive"  # where Colab mounts Google Drive

HUBS = ("hf", "hf-mirror", "modelscope", "offline")
HUB_ENV_VAR = "COURSE_HUB"
HF_ENDPOINT_DEFAULT = "https://huggingface.co"
HF_MIRROR_ENDPOINT = "https://hf-mirror.com"
MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"
HF_ENDPOINTS = {"hf": HF_ENDPOINT_DEFAULT, "hf-mirror": HF_MIRROR_ENDPOINT}
_PROBE_ORDER = (
    ("hf", HF_ENDPOINT_DEFAULT),
    ("hf-mirror", HF_MIRROR_ENDPOINT),
    ("modelscope", MODELSCOPE_ENDPOINT),
)
_TRUE_VALUES = {"1", "true", "yes", "on"}


class UnknownHubError(ValueError):
    """Raised when a hub name is not one of :data:`HUBS`."""


class InsufficientDiskError(RuntimeError):
    """Raised when a disk has too little free space for a download."""


class ModelNotAvailableOffline(FileNotFoundError):
    """Raised when the hub is 'offline' and the model is in no local cache."""


# --- hardware and platform -------------------------------------------------------------------


@dataclass
class GpuInfo:
    """The first CUDA device, as the profiles and the setup cell need it."""

    name: str
    vram_gb: float  # GiB
    compute_capability: tuple[int, int]
    bf16: bool  # native bfloat16 (Ampere, compute capability 8.0, or newer); False on a T4


def gpu_info() -> GpuInfo | None:
    """The first CUDA GPU, or None when torch sees no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return GpuInfo(
        name=props.name,
        vram_gb=round(props.total_memory / GIB, 1),
        compute_capability=(props.major, props.minor),
        # torch.cuda.is_bf16_supported() also counts emulation (slow on a T4), so ask the hardware.
        bf16=props.major >= 8,
    )


def detect_platform(
    environ: Mapping[str, str] | None = None, exists: Callable[[str], bool] = os.path.exists
) -> str:
    """'colab', 'autodl' or 'local', from environment variables and well-known paths."""
    environ = os.environ if environ is None else environ
    if "COLAB_RELEASE_TAG" in environ or "COLAB_GPU" in environ or _colab_importable():
        return "colab"
    autodl_vars = any(key.upper().startswith("AUTODL") for key in environ)
    if exists(str(platform_path(AUTODL_DATA_DISK))) or autodl_vars:
        return "autodl"
    return "local"


def _colab_importable() -> bool:
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no `google` package at all
        return False


# --- hub choice ------------------------------------------------------------------------------


def _validate_hub(hub: str) -> str:
    key = hub.strip().lower()
    if key not in HUBS:
        raise UnknownHubError(
            f"Unknown hub {hub!r}. Choose one of: {', '.join(HUBS)} "
            f"(set {HUB_ENV_VAR}=<hub>, or unset it to choose automatically)."
        )
    return key


def probe_url(url: str, timeout: float = 3.0) -> bool:
    """True when ``url`` answers an HTTP HEAD request within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError as err:  # the server answered, just not with 2xx/3xx
        return err.code < 500
    except Exception:  # DNS failure, timeout, reset by the firewall, proxy error, ...
        return False


def choose_hub(
    profile: Any = None,
    environ: Mapping[str, str] | None = None,
    platform: str | None = None,
    probe: Callable[[str], bool] = probe_url,
) -> str:
    """The hub to download from: COURSE_HUB, else offline and platform rules, else probing."""
    environ = os.environ if environ is None else environ
    override = environ.get(HUB_ENV_VAR, "").strip()
    if override:
        return _validate_hub(override)
    if environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES:
        return "offline"
    if profile is not None and profile.model_source != "hub":
        return "offline"  # tiny and cpu-demo models never come from a hub
    if environ.get("HF_ENDPOINT", "").rstrip("/") == HF_MIRROR_ENDPOINT:
        return "hf-mirror"  # the learner already chose the mirror the usual way
    platform = platform or detect_platform(environ)
    if platform == "autodl":
        return "modelscope"  # fast inside mainland China; huggingface.co usually is not
    if platform == "colab":
        return "hf"
    for hub, url in _PROBE_ORDER:
        if probe(url):
            return hub
    return "offline"


# --- caches and disk -------------------------------------------------------------------------


def cache_dirs(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The effective cache dirs: HF_HOME, HF_HUB_CACHE (where HF models go) and MODELSCOPE_CACHE."""
    environ = os.environ if environ is None else environ
    user_cache = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    hf_home = Path(environ.get("HF_HOME") or user_cache / "huggingface").expanduser()
    hf_hub_cache = Path(environ.get("HF_HUB_CACHE") or hf_home / "hub").expanduser()
    modelscope = environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope" / "hub"
    return {
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_hub_cache),
        "MODELSCOPE_CACHE": str(Path(modelscope).expanduser()),
    }


def configure_caches(
    platform: str | None = None, environ: MutableMapping[str, str] = os.environ
) -> dict[str, str]:
    """On AutoDL put the caches on the data disk (unless already set); return the cache dirs."""
    platform = platform or detect_platform(environ)
    if platform == "autodl":
        for var, sub in (("HF_HOME", "hf_home"), ("MODELSCOPE_CACHE", "modelscope")):
            if not environ.get(var):
                environ[var] = str(platform_path(AUTODL_DATA_DISK) / sub)
    return cache_dirs(environ)


def free_disk_gb(path: str | os.PathLike, disk_usage: Callable = _disk_usage) -> float:
    """Free GB on the disk holding ``path`` (or its nearest existing parent)."""
    existing = Path(path).expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return disk_usage(existing).free / GB


def check_disk(
    path: str | os.PathLike,
    need_gb: float,
    platform: str | None = None,
    disk_usage: Callable = _disk_usage,
    margin_gb: float = 1.0,
    what: str | None = None,
    fix: str | None = None,
) -> float:
    """Return the free GB at ``path``; raise InsufficientDiskError below ``need_gb + margin_gb``.

    ``what`` names what is being written; ``fix`` replaces the default (download) advice.
    """
    free = free_disk_gb(path, disk_usage)
    if free >= need_gb + margin_gb:
        return free
    platform = platform or detect_platform()
    message = (
        f"Not enough disk space{f' for {what}' if what else ''} at {path}: {free:.1f} GB free, "
        f"{need_gb:.1f} GB needed (+{margin_gb:.1f} GB margin).\n"
    )
    data_disk = platform_path(AUTODL_DATA_DISK)
    if fix:
        message += fix
    elif platform == "autodl" and data_disk not in [Path(path), *Path(path).absolute().parents]:
        message += (
            "On AutoDL the system disk (/, which holds ~/.cache) is only about 30 GB; models "
            f"belong on the data disk {AUTODL_DATA_DISK}. Fix: run configure_caches() before "
            "importing transformers, or in a terminal\n"
            f"  export HF_HOME={AUTODL_DATA_DISK}/hf_home "
            f"MODELSCOPE_CACHE={AUTODL_DATA_DISK}/modelscope\n"
            "then free the system disk: rm -rf ~/.cache/huggingface ~/.cache/modelscope "
            "(check first with `du -sh ~/.cache/*` and `df -h`)."
        )
    elif platform == "autodl":
        message += (
            f"Fix: delete models and checkpoints you no longer need under {AUTODL_DATA_DISK} "
            "(`du -sh /root/autodl-tmp/*`), or enlarge the data disk in the AutoDL console."
        )
    else:
        message += (
            "Fix: delete models you no longer need from the cache (`du -sh` the folder above), "
            "or point HF_HOME / MODELSCOPE_CACHE at a disk with more space and re-run."
        )
    raise InsufficientDiskError(message)


# --- finding models on disk ------------------------------------------------------------------


def modelscope_local_dir(cache_root: str | os.PathLike, model_id: str) -> Path:
    """Where ModelScope stores ``model_id`` under ``cache_root`` ('.' in the name becomes '___')."""
    owner, _, name = model_id.partition("/")
    return Path(cache_root) / "models" / owner / name.replace(".", "___")


def _modelscope_candidates(cache_root: str | os.PathLike, model_id: str) -> list[Path]:
    """Every folder a ModelScope version may have used: models/ or not, hub/ or not, ___ or '.'."""
    owner, _, name = model_id.partition("/")
    roots = (Path(cache_root), Path(cache_root) / "hub")
    names = dict.fromkeys((name.replace(".", "___"), name))
    return [root / sub / owner / n for root in roots for sub in ("models", "") for n in names]


def _hf_repo_dir(hub_cache: str | os.PathLike, model_id: str) -> Path:
    return Path(hub_cache) / ("models--" + model_id.replace("/", "--"))


def _complete(folder: Path) -> bool:
    """A model folder with its config and every weight file (an interrupted download is not)."""
    if not (folder / "config.json").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        return all((folder / shard).is_file() for shard in shards)
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def _hf_snapshot(
    hub_cache: str | os.PathLike, model_id: str, revision: str | None = None
) -> Path | None:
    """The pinned revision's snapshot, else the one refs/main points to, else the newest."""
    repo = _hf_repo_dir(hub_cache, model_id)
    if revision is not None:
        snapshot = repo / "snapshots" / revision
        return snapshot if _complete(snapshot) else None
    ref = repo / "refs" / "main"
    snapshots = [repo / "snapshots" / ref.read_text().strip()] if ref.is_file() else []
    snapshots += sorted(
        (repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    return next((s for s in snapshots if _complete(s)), None)


def _search_locations(model_id: str, caches: Mapping[str, str]) -> list[Path]:
    places = []
    if caches.get("HF_HUB_CACHE"):
        places.append(_hf_repo_dir(caches["HF_HUB_CACHE"], model_id) / "snapshots")
    if caches.get("MODELSCOPE_CACHE"):
        places += _modelscope_candidates(caches["MODELSCOPE_CACHE"], model_id)
    return places


def find_local_model(
    model_id: str, caches: Mapping[str, str] | None = None, revision: str | None = None
) -> Path | None:
    """A complete downloaded copy of ``model_id`` (at ``revision`` in the HF cache), or None.

    Never touches the network. ``revision`` pins the Hugging Face snapshot; ModelScope keeps one
    folder per model, without revisions.
    """
    plain = Path(model_id).expanduser()
    if (plain / "config.json").is_file():
        return plain
    caches = cache_dirs() if caches is None else caches
    if caches.get("HF_HUB_CACHE"):
        snapshot = _hf_snapshot(caches["HF_HUB_CACHE"], model_id, revision)
        if snapshot is not None:
            return snapshot
    if caches.get("MODELSCOPE_CACHE"):
        ms_dirs = _modelscope_candidates(caches["MODELSCOPE_CACHE"], model_id)
        return next((d for d in ms_dirs if _complete(d)), None)
    return None


# --- downloading -----------------------------------------------------------------------------


def remote_size_gb(
    model_id: str, hub: str, *, hf_api: Any = None, ms_api: Any = None
) -> float | None:
    """Total size in GB of the model's files according to the hub, or None if it cannot tell."""
    hub = _validate_hub(hub)
    try:
        if hub in HF_ENDPOINTS:
            if hf_api is None:
                from huggingface_hub import HfApi

                hf_api = HfApi(endpoint=HF_ENDPOINTS[hub])
            info = hf_api.model_info(model_id, files_metadata=True)
            sizes = [sibling.size for sibling in info.siblings or []]
        elif hub == "modelscope":
            if ms_api is None:
                from modelscope.hub.api import HubApi

                ms_api = HubApi()
            sizes = [
                entry.get("Size") for entry in ms_api.get_model_files(model_id, recursive=True)
            ]
        else:
            return None
    except Exception:  # network, auth, missing package, unexpected metadata: size is unknown
        return None
    known = [size for size in sizes if size]
    return sum(known) / GB if known else None


def _import_modelscope_snapshot_download() -> Callable[..., str]:
    try:
        from modelscope import snapshot_download
    except ImportError as err:
        raise ImportError(
            "Downloading from ModelScope needs the modelscope package, which is not installed. "
            "Fix: run `pip install -e '.[hub]'` (then restart the kernel), or pick another hub "
            f"with {HUB_ENV_VAR}=hf-mirror."
        ) from err
    return snapshot_download


def download_model(
    model_id: str,
    hub: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    need_gb: float | None = None,
    platform: str | None = None,
    snapshot_download: Callable[..., str] | None = None,
) -> Path:
    """Download ``model_id`` (or find it offline) and return its folder, which has config.json."""
    platform = platform or detect_platform()
    hub = choose_hub(platform=platform) if hub is None else _validate_hub(hub)
    if hub == "offline":
        return _find_offline(model_id, cache_dir, revision)

    cache_key = "MODELSCOPE_CACHE" if hub == "modelscope" else "HF_HUB_CACHE"
    if cache_dir is not None:
        target = Path(cache_dir)
    elif hub == "modelscope":  # the layout modelscope itself uses when MODELSCOPE_CACHE is set
        target = Path(cache_dirs()[cache_key]) / "models"
    else:  # explicit, because huggingface_hub reads HF_HOME only once, at import
        target = Path(cache_dirs()[cache_key])
    pinned = revision if hub != "modelscope" else None  # HF commit ids mean nothing there
    local = find_local_model(model_id, {cache_key: str(target)}, pinned)
    if local is not None:  # already complete on disk: no network at all
        return local
    size = need_gb if need_gb is not None else remote_size_gb(model_id, hub)
    if size is not None:  # unknown size: let the download itself report a full disk
        check_disk(target, size, platform=platform)

    kwargs: dict[str, Any] = {"cache_dir": str(target)}
    if pinned is not None:
        kwargs["revision"] = pinned
    if hub == "modelscope":
        download = snapshot_download or _import_modelscope_snapshot_download()
    else:
        from huggingface_hub import snapshot_download as hf_snapshot_download

        download = snapshot_download or hf_snapshot_download
        kwargs["endpoint"] = HF_ENDPOINTS[hub]
    path = Path(download(model_id, **kwargs))
    if (path / "config.json").is_file():
        return path
    # Some modelscope versions return the name with '.' while the folder on disk uses '___'.
    found = find_local_model(model_id, {cache_key: str(target)}, pinned)
    if found is None:
        raise FileNotFoundError(
            f"Downloaded {model_id!r} from {hub} to {path}, but there is no config.json there. "
            "The download is probably incomplete: re-run download_model() to resume it."
        )
    return found


def _find_offline(
    model_id: str, cache_dir: str | os.PathLike | None, revision: str | None = None
) -> Path:
    caches = (
        cache_dirs()
        if cache_dir is None
        else {"HF_HUB_CACHE": str(cache_dir), "MODELSCOPE_CACHE": str(cache_dir)}
    )
    found = find_local_model(model_id, caches, revision)
    if found is not None:
        return found
    looked = "\n".join(
        f"  - {place}" for place in [Path(model_id), *_search_locations(model_id, caches)]
    )
    raise ModelNotAvailableOffline(
        f"Model {model_id!r} is not on this machine and the hub is 'offline' (no hub was "
        f"reachable, or HF_HUB_OFFLINE=1 / {HUB_ENV_VAR}=offline is set). Looked in:\n{looked}\n"
        "Fix one of:\n"
        "  - connect to the internet and re-run this cell;\n"
        f"  - in mainland China: os.environ['{HUB_ENV_VAR}'] = 'hf-mirror' (or 'modelscope'), "
        "then re-run;\n"
        "  - copy an already downloaded model folder (the one containing config.json) to "
        f"{modelscope_local_dir(caches['MODELSCOPE_CACHE'], model_id)} "
        "or pass that folder's path instead of the model id."
    )


# --- environment report ----------------------------------------------------------------------


@dataclass
class EnvReport:
    """What the setup cell shows: platform, software versions, hardware, hub and caches."""

    platform: str
    python: str
    torch: str
    cuda: str | None
    gpu: GpuInfo | None
    cpu_count: int
    ram_gb: float | None  # GiB
    hub: str
    caches: dict[str, str]
    free_disk_gb: float  # on the disk of the Hugging Face cache

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict, for results files."""
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """(item, value) pairs: ``pandas.DataFrame(report.rows(), columns=["item", "value"])``."""
        gpu = "none (CPU only)"
        if self.gpu is not None:
            major, minor = self.gpu.compute_capability
            bf16 = "bf16" if self.gpu.bf16 else "no bf16"
            gpu = f"{self.gpu.name}, {self.gpu.vram_gb:.1f} GiB, sm_{major}{minor}, {bf16}"
        rows = [
            ("platform", self.platform),
            ("python", self.python),
            ("torch", self.torch),
            ("cuda", self.cuda or "none"),
            ("gpu", gpu),
            ("cpu_count", str(self.cpu_count)),
            ("ram_gb", "unknown" if self.ram_gb is None else f"{self.ram_gb:.1f}"),
            ("hub", self.hub),
        ]
        rows += [(name, path) for name, path in self.caches.items()]
        return rows + [("free_disk_gb", f"{self.free_disk_gb:.1f}")]


def _ram_gb() -> float | None:
    """The memory this process may use: a container's cgroup limit, else the host's RAM."""
    from helpers.resources import available_memory

    return available_memory().total / GIB


def detect_environment(profile: Any = None) -> EnvReport:
    """Collect an :class:`EnvReport` for this machine (probes hubs only for hub profiles)."""
    import torch

    platform = detect_platform()
    caches = cache_dirs()
    gpu = gpu_info()
    return EnvReport(
        platform=platform,
        python=_platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda if gpu is not None else None,
        gpu=gpu,
        cpu_count=usable_cpus(),
        ram_gb=_ram_gb(),
        hub=choose_hub(profile, platform=platform),
        caches=caches,
        free_disk_gb=free_disk_gb(caches["HF_HUB_CACHE"]),
    )
