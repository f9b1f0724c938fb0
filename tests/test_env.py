"""Unit tests for helpers.env; every network call is faked and any real connection fails."""

from __future__ import annotations

import os
import sys
import types
import urllib.error
import urllib.request
from collections import namedtuple
from pathlib import Path

import pytest
from fakes import RecordingProbe

from helpers import env
from helpers.profiles import get_profile

DiskUsage = namedtuple("DiskUsage", "total used free")


def fake_disk(free_gb: float):
    """A shutil.disk_usage stand-in that reports ``free_gb`` and records the paths asked about."""

    def disk_usage(path):
        disk_usage.paths.append(Path(path))
        return DiskUsage(total=500 * env.GB, used=0, free=int(free_gb * env.GB))

    disk_usage.paths = []
    return disk_usage


def write_model(folder: Path) -> Path:
    """A complete (if tiny) model folder: config and weights, as a finished download leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


class FakeSnapshot:
    """A snapshot_download stand-in that creates the folder it returns, with a config.json."""

    def __init__(self, make_path):
        self.make_path = make_path
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, repo_id: str, **kwargs) -> str:
        self.calls.append((repo_id, kwargs))
        path = self.make_path(repo_id, kwargs)
        write_model(path)
        return str(path)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, no_network):
    """No real network, no real caches, no hub settings leaking in from the machine."""
    for var in ("COURSE_HUB", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms_cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def make_hf_snapshot(hub_cache: Path, model_id: str, rev: str, *, ref: bool = True) -> Path:
    repo = hub_cache / ("models--" + model_id.replace("/", "--"))
    snapshot = repo / "snapshots" / rev
    write_model(snapshot)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(rev)
    return snapshot


# --- gpu_info ----------------------------------------------------------------------------------


def test_gpu_info_none_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert env.gpu_info() is None


@pytest.mark.parametrize(
    ("name", "total", "cc", "bf16"),
    [
        ("Tesla T4", 15_828_320_256, (7, 5), False),
        ("NVIDIA GeForce RTX 4090", 25_393_692_672, (8, 9), True),
    ],
)
def test_gpu_info_reads_first_device(monkeypatch, name, total, cc, bf16):
    import torch

    props = types.SimpleNamespace(name=name, total_memory=total, major=cc[0], minor=cc[1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    info = env.gpu_info()
    assert info == env.GpuInfo(name, round(total / 1024**3, 1), cc, bf16)


def test_active_profile_uses_gpu_info(monkeypatch):
    from helpers.profiles import active_profile

    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setattr(env, "gpu_info", lambda: env.GpuInfo("RTX 3090", 23.6, (8, 6), True))
    assert active_profile().name == "24g"
    monkeypatch.setattr(env, "gpu_info", lambda: env.GpuInfo("Tesla T4", 14.7, (7, 5), False))
    assert active_profile().name == "t4"


# --- detect_platform ---------------------------------------------------------------------------


def never_exists(path: str) -> bool:
    return False


@pytest.mark.parametrize("var", ["COLAB_RELEASE_TAG", "COLAB_GPU"])
def test_detect_platform_colab_from_env(var):
    assert env.detect_platform({var: "1"}, exists=never_exists) == "colab"


def test_detect_platform_colab_from_loaded_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert env.detect_platform({}, exists=never_exists) == "colab"


def test_detect_platform_autodl_from_data_disk():
    seen = []

    def exists(path):
        seen.append(path)
        return path == "/root/autodl-tmp"

    assert env.detect_platform({}, exists=exists) == "autodl"
    assert seen == ["/root/autodl-tmp"]


def test_detect_platform_autodl_from_env():
    environ = {"AutoDLContainerUUID": "abc"}
    assert env.detect_platform(environ, exists=never_exists) == "autodl"


def test_detect_platform_local():
    assert env.detect_platform({"PATH": "/usr/bin"}, exists=never_exists) == "local"


# --- probe_url and choose_hub ------------------------------------------------------------------


def test_probe_url_sends_head_and_reports_reachable(monkeypatch):
    requests = []

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(request, timeout):
        requests.append((request.full_url, request.get_method(), timeout))
        return Response()

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    assert env.probe_url("https://hf-mirror.com", timeout=1.5) is True
    assert requests == [("https://hf-mirror.com", "HEAD", 1.5)]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TimeoutError("timed out"), False),
        (urllib.error.URLError("Name or service not known"), False),
        (ConnectionResetError("reset by peer"), False),
        (urllib.error.HTTPError("https://x", 405, "Method Not Allowed", {}, None), True),
        (urllib.error.HTTPError("https://x", 502, "Bad Gateway", {}, None), False),
    ],
)
def test_probe_url_failures(monkeypatch, error, expected):
    def urlopen(request, timeout):
        raise error

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    assert env.probe_url("https://x") is expected


def test_choose_hub_override_wins_and_is_normalised():
    probe = RecordingProbe()
    hub = env.choose_hub(environ={"COURSE_HUB": " ModelScope "}, platform="colab", probe=probe)
    assert hub == "modelscope"
    assert probe.urls == []


def test_choose_hub_unknown_override_lists_valid_values():
    with pytest.raises(env.UnknownHubError) as excinfo:
        env.choose_hub(environ={"COURSE_HUB": "huggingface"}, probe=RecordingProbe())
    message = str(excinfo.value)
    assert "'huggingface'" in message
    for hub in env.HUBS:
        assert hub in message
    assert isinstance(excinfo.value, ValueError)


def test_choose_hub_hf_hub_offline():
    probe = RecordingProbe(env.HF_ENDPOINT_DEFAULT)
    assert (
        env.choose_hub(environ={"HF_HUB_OFFLINE": "1"}, platform="local", probe=probe) == "offline"
    )
    assert probe.urls == []


@pytest.mark.parametrize("name", ["tiny", "cpu-demo"])
@pytest.mark.parametrize("platform", ["local", "colab", "autodl"])
def test_choose_hub_local_profiles_probe_nothing(name, platform):
    probe = RecordingProbe(env.HF_ENDPOINT_DEFAULT)
    assert (
        env.choose_hub(get_profile(name), environ={}, platform=platform, probe=probe) == "offline"
    )
    assert probe.urls == []


@pytest.mark.parametrize(("platform", "expected"), [("autodl", "modelscope"), ("colab", "hf")])
def test_choose_hub_platform_defaults(platform, expected):
    probe = RecordingProbe()
    assert (
        env.choose_hub(get_profile("24g"), environ={}, platform=platform, probe=probe) == expected
    )
    assert probe.urls == []


def test_choose_hub_detects_platform_from_environ():
    probe = RecordingProbe()
    assert env.choose_hub(environ={"COLAB_GPU": "1"}, probe=probe) == "hf"
    assert probe.urls == []


@pytest.mark.parametrize(
    ("reachable", "expected", "probed"),
    [
        ({env.HF_ENDPOINT_DEFAULT, env.HF_MIRROR_ENDPOINT}, "hf", 1),
        ({env.HF_MIRROR_ENDPOINT, env.MODELSCOPE_ENDPOINT}, "hf-mirror", 2),
        ({env.MODELSCOPE_ENDPOINT}, "modelscope", 3),
        (set(), "offline", 3),
    ],
)
def test_choose_hub_probe_order(reachable, expected, probed):
    probe = RecordingProbe(*reachable)
    assert env.choose_hub(get_profile("t4"), environ={}, platform="local", probe=probe) == expected
    order = [env.HF_ENDPOINT_DEFAULT, env.HF_MIRROR_ENDPOINT, env.MODELSCOPE_ENDPOINT]
    assert probe.urls == order[:probed]


# --- caches and disk ---------------------------------------------------------------------------


def test_configure_caches_autodl_moves_caches_to_data_disk():
    environ = {}
    caches = env.configure_caches("autodl", environ)
    assert environ == {
        "HF_HOME": "/root/autodl-tmp/hf_home",
        "MODELSCOPE_CACHE": "/root/autodl-tmp/modelscope",
    }
    assert caches["HF_HOME"] == "/root/autodl-tmp/hf_home"
    assert caches["HF_HUB_CACHE"] == "/root/autodl-tmp/hf_home/hub"
    assert caches["MODELSCOPE_CACHE"] == "/root/autodl-tmp/modelscope"


def test_configure_caches_respects_user_settings():
    environ = {"HF_HOME": "/data/hf", "MODELSCOPE_CACHE": "/data/ms"}
    caches = env.configure_caches("autodl", environ)
    assert environ == {"HF_HOME": "/data/hf", "MODELSCOPE_CACHE": "/data/ms"}
    assert (caches["HF_HOME"], caches["MODELSCOPE_CACHE"]) == ("/data/hf", "/data/ms")


def test_configure_caches_elsewhere_changes_nothing(tmp_path):
    environ = {}
    caches = env.configure_caches("local", environ)
    assert environ == {}
    home = tmp_path / "home"
    assert caches == {
        "HF_HOME": str(home / ".cache" / "huggingface"),
        "HF_HUB_CACHE": str(home / ".cache" / "huggingface" / "hub"),
        "MODELSCOPE_CACHE": str(home / ".cache" / "modelscope" / "hub"),
    }


def test_cache_dirs_honours_hf_hub_cache():
    caches = env.cache_dirs({"HF_HOME": "/a", "HF_HUB_CACHE": "/b"})
    assert (caches["HF_HOME"], caches["HF_HUB_CACHE"]) == ("/a", "/b")


def test_free_disk_gb_uses_nearest_existing_parent(tmp_path):
    disk_usage = fake_disk(42.0)
    assert env.free_disk_gb(tmp_path / "not" / "yet" / "there", disk_usage) == pytest.approx(42.0)
    assert disk_usage.paths == [tmp_path]


def test_check_disk_enough_space_returns_free(tmp_path):
    assert env.check_disk(tmp_path, 10.0, "local", fake_disk(11.5)) == pytest.approx(11.5)


def test_check_disk_autodl_system_disk_explains_fix():
    with pytest.raises(env.InsufficientDiskError) as excinfo:
        env.check_disk("/root/.cache/huggingface/hub", 15.2, "autodl", fake_disk(8.0))
    message = str(excinfo.value)
    assert "/root/.cache/huggingface/hub" in message
    assert "8.0 GB free" in message and "15.2 GB needed" in message
    assert "30 GB" in message
    assert (
        "export HF_HOME=/root/autodl-tmp/hf_home MODELSCOPE_CACHE=/root/autodl-tmp/modelscope"
        in (message)
    )
    assert "~/.cache" in message


def test_check_disk_margin_counts():
    with pytest.raises(env.InsufficientDiskError):
        env.check_disk("/x", 10.0, "local", fake_disk(10.5), margin_gb=1.0)


def test_check_disk_local_message_has_no_autodl_advice():
    with pytest.raises(env.InsufficientDiskError) as excinfo:
        env.check_disk("/x", 3.1, "local", fake_disk(0.5))
    assert "autodl" not in str(excinfo.value).lower()
    assert "HF_HOME" in str(excinfo.value)


# --- finding local models ----------------------------------------------------------------------


def test_modelscope_local_dir_renames_dots_in_name_only():
    path = env.modelscope_local_dir("/c", "Qwen/Qwen2.5-7B-Instruct")
    assert path == Path("/c/models/Qwen/Qwen2___5-7B-Instruct")
    assert env.modelscope_local_dir("/c", "a.b/c.d.e") == Path("/c/models/a.b/c___d___e")


def test_find_local_model_hf_cache_follows_refs_main(tmp_path):
    hub_cache = tmp_path / "hf_home" / "hub"
    old = make_hf_snapshot(hub_cache, "Qwen/Qwen2.5-1.5B-Instruct", "aaa")
    current = make_hf_snapshot(hub_cache, "Qwen/Qwen2.5-1.5B-Instruct", "bbb")
    os.utime(old, (2_000_000_000, 2_000_000_000))  # make the stale snapshot the newest on disk
    assert env.find_local_model("Qwen/Qwen2.5-1.5B-Instruct") == current


def test_find_local_model_hf_snapshot_without_ref(tmp_path):
    hub_cache = tmp_path / "hub"
    snapshot = make_hf_snapshot(hub_cache, "org/m", "ccc", ref=False)
    assert env.find_local_model("org/m", {"HF_HUB_CACHE": str(hub_cache)}) == snapshot


def test_find_local_model_ignores_snapshot_without_config(tmp_path):
    snapshot = make_hf_snapshot(tmp_path / "hf_home" / "hub", "org/m", "ddd")
    (snapshot / "config.json").unlink()
    assert env.find_local_model("org/m") is None


@pytest.mark.parametrize(
    "relative",
    [
        "models/Qwen/Qwen2___5-7B-Instruct",  # current modelscope
        "Qwen/Qwen2___5-7B-Instruct",  # older modelscope
        "Qwen/Qwen2.5-7B-Instruct",  # copied by hand, no rename
        "hub/models/Qwen/Qwen2___5-7B-Instruct",  # MODELSCOPE_CACHE pointed one level up
    ],
)
def test_find_local_model_modelscope_layouts(tmp_path, relative):
    folder = write_model(tmp_path / "ms_cache" / relative)
    assert env.find_local_model("Qwen/Qwen2.5-7B-Instruct") == folder


def test_find_local_model_plain_directory(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert env.find_local_model(str(folder)) == folder


def test_find_local_model_missing_returns_none():
    assert env.find_local_model("Qwen/Qwen2.5-7B-Instruct") is None


# --- remote_size_gb ----------------------------------------------------------------------------


def test_remote_size_gb_from_hf_metadata():
    calls = []

    class Api:
        def model_info(self, repo_id, files_metadata):
            calls.append((repo_id, files_metadata))
            sizes = [3 * env.GB, 1 * env.GB, None]
            return types.SimpleNamespace(siblings=[types.SimpleNamespace(size=s) for s in sizes])

    assert env.remote_size_gb("org/m", "hf-mirror", hf_api=Api()) == pytest.approx(4.0)
    assert calls == [("org/m", True)]


def test_remote_size_gb_default_hf_api_uses_mirror_endpoint(monkeypatch):
    import huggingface_hub

    endpoints = []

    class Api:
        def __init__(self, endpoint):
            endpoints.append(endpoint)

        def model_info(self, repo_id, files_metadata):
            return types.SimpleNamespace(siblings=[types.SimpleNamespace(size=2 * env.GB)])

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    assert env.remote_size_gb("org/m", "hf-mirror") == pytest.approx(2.0)
    assert endpoints == [env.HF_MIRROR_ENDPOINT]


def test_remote_size_gb_from_modelscope_metadata():
    class Api:
        def get_model_files(self, model_id, recursive):
            assert (model_id, recursive) == ("Qwen/Qwen2.5-7B-Instruct", True)
            return [{"Name": "a", "Size": 5 * env.GB}, {"Name": "dir", "Size": 0}]

    assert env.remote_size_gb("Qwen/Qwen2.5-7B-Instruct", "modelscope", ms_api=Api()) == 5.0


def test_remote_size_gb_failures_give_none(monkeypatch):
    class Broken:
        def model_info(self, *args, **kwargs):
            raise OSError("connection refused")

    assert env.remote_size_gb("org/m", "hf", hf_api=Broken()) is None
    monkeypatch.setitem(sys.modules, "modelscope", None)  # not installed
    monkeypatch.setitem(sys.modules, "modelscope.hub.api", None)
    assert env.remote_size_gb("org/m", "modelscope") is None
    assert env.remote_size_gb("org/m", "offline") is None
    with pytest.raises(env.UnknownHubError):
        env.remote_size_gb("org/m", "github")


# --- download_model ----------------------------------------------------------------------------


@pytest.fixture
def hf_fake(tmp_path):
    return FakeSnapshot(lambda repo_id, kw: Path(kw["cache_dir"]) / "snap" / repo_id)


@pytest.mark.parametrize(
    ("hub", "endpoint"), [("hf", env.HF_ENDPOINT_DEFAULT), ("hf-mirror", env.HF_MIRROR_ENDPOINT)]
)
def test_download_model_hf_endpoints(tmp_path, hf_fake, hub, endpoint):
    path = env.download_model(
        "org/m", hub, need_gb=0.0, platform="local", snapshot_download=hf_fake, revision="v1"
    )
    cache = str(tmp_path / "hf_home" / "hub")
    assert hf_fake.calls == [
        ("org/m", {"cache_dir": cache, "revision": "v1", "endpoint": endpoint})
    ]
    assert path == Path(cache) / "snap" / "org/m"
    assert (path / "config.json").is_file()


def test_download_model_default_is_library_snapshot_download(monkeypatch, tmp_path, hf_fake):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", hf_fake)
    env.download_model("org/m", "hf", cache_dir=tmp_path / "c", need_gb=0.0, platform="local")
    assert hf_fake.calls[0][1]["cache_dir"] == str(tmp_path / "c")
    assert hf_fake.calls[0][1]["endpoint"] == env.HF_ENDPOINT_DEFAULT


def test_download_model_chooses_hub_when_none(monkeypatch, hf_fake):
    monkeypatch.setenv("COURSE_HUB", "hf-mirror")
    env.download_model("org/m", need_gb=0.0, platform="local", snapshot_download=hf_fake)
    assert hf_fake.calls[0][1]["endpoint"] == env.HF_MIRROR_ENDPOINT


def test_download_model_unknown_hub(hf_fake):
    with pytest.raises(env.UnknownHubError):
        env.download_model("org/m", "hugging", need_gb=0.0, snapshot_download=hf_fake)
    assert hf_fake.calls == []


def test_download_model_checks_disk_before_downloading(monkeypatch, tmp_path, hf_fake):
    checked = []
    real_check_disk = env.check_disk

    def check_disk(path, need_gb, platform=None):
        checked.append((Path(path), need_gb, platform))
        return real_check_disk(path, need_gb, platform, disk_usage=fake_disk(2.0))

    monkeypatch.setattr(env, "check_disk", check_disk)
    monkeypatch.setattr(env, "remote_size_gb", lambda model_id, hub: 15.2)
    with pytest.raises(env.InsufficientDiskError, match="/root/autodl-tmp"):
        env.download_model(
            "Qwen/Qwen2.5-7B-Instruct", "hf", platform="autodl", snapshot_download=hf_fake
        )
    assert checked == [(tmp_path / "hf_home" / "hub", 15.2, "autodl")]
    assert hf_fake.calls == []


def test_download_model_returns_a_complete_local_copy_without_the_network(
    monkeypatch, tmp_path, hf_fake
):
    snapshot = make_hf_snapshot(tmp_path / "hf_home" / "hub", "org/m", "eee")
    monkeypatch.setattr(env, "check_disk", lambda *a, **k: pytest.fail("disk checked"))
    monkeypatch.setattr(env, "remote_size_gb", lambda *a, **k: pytest.fail("size asked"))
    assert (
        env.download_model("org/m", "hf", platform="local", snapshot_download=hf_fake) == snapshot
    )
    assert hf_fake.calls == []  # no hub call at all (a fresh AutoDL notebook, offline, ...)


def test_download_model_fetches_the_pinned_revision_when_only_another_is_cached(
    monkeypatch, tmp_path, hf_fake
):
    make_hf_snapshot(tmp_path / "hf_home" / "hub", "org/m", "old")
    monkeypatch.setattr(env, "remote_size_gb", lambda *a, **k: None)
    env.download_model("org/m", "hf", revision="new", platform="local", snapshot_download=hf_fake)
    assert [kw["revision"] for _, kw in hf_fake.calls] == ["new"]


def test_an_interrupted_download_is_not_taken_for_a_model(tmp_path):
    snapshot = make_hf_snapshot(tmp_path / "hf_home" / "hub", "org/m", "fff")
    (snapshot / "model.safetensors").unlink()  # config.json arrived, the weights did not
    assert env.find_local_model("org/m") is None
    (snapshot / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors", '
        '"b": "model-00002-of-00002.safetensors"}}'
    )
    (snapshot / "model-00001-of-00002.safetensors").write_bytes(b"w")
    assert env.find_local_model("org/m") is None  # a shard is missing
    (snapshot / "model-00002-of-00002.safetensors").write_bytes(b"w")
    assert env.find_local_model("org/m") == snapshot


def test_download_model_unknown_size_downloads_without_check(monkeypatch, hf_fake):
    monkeypatch.setattr(env, "remote_size_gb", lambda model_id, hub: None)
    monkeypatch.setattr(env, "check_disk", lambda *a, **k: pytest.fail("disk checked"))
    env.download_model("org/m", "hf", platform="local", snapshot_download=hf_fake)
    assert len(hf_fake.calls) == 1


def test_download_model_without_config_json_says_resume(tmp_path):
    def snapshot_download(repo_id, **kwargs):
        (tmp_path / "partial").mkdir()
        return str(tmp_path / "partial")

    with pytest.raises(FileNotFoundError, match="re-run download_model"):
        env.download_model(
            "org/m", "hf", need_gb=0.0, platform="local", snapshot_download=snapshot_download
        )


def install_fake_modelscope(monkeypatch, fake):
    module = types.ModuleType("modelscope")
    module.snapshot_download = fake
    monkeypatch.setitem(sys.modules, "modelscope", module)


def test_download_model_modelscope_lazy_import_and_rename(monkeypatch, tmp_path):
    fake = FakeSnapshot(
        lambda repo_id, kw: env.modelscope_local_dir(Path(kw["cache_dir"]).parent, repo_id)
    )
    install_fake_modelscope(monkeypatch, fake)
    path = env.download_model(
        "Qwen/Qwen2.5-7B-Instruct", "modelscope", need_gb=0.0, platform="local"
    )
    assert fake.calls == [
        ("Qwen/Qwen2.5-7B-Instruct", {"cache_dir": str(tmp_path / "ms_cache" / "models")})
    ]
    assert path == tmp_path / "ms_cache" / "models" / "Qwen" / "Qwen2___5-7B-Instruct"


def test_download_model_modelscope_returned_unrenamed_path(monkeypatch, tmp_path):
    target = tmp_path / "ms"
    renamed = target / "Qwen" / "Qwen2___5-1___5B-Instruct"

    def snapshot_download(model_id, cache_dir):
        write_model(renamed)
        return str(Path(cache_dir) / model_id)  # the '.' spelling, which does not exist

    install_fake_modelscope(monkeypatch, snapshot_download)
    path = env.download_model(
        "Qwen/Qwen2.5-1.5B-Instruct", "modelscope", cache_dir=target, need_gb=0.0, platform="local"
    )
    assert path == renamed


def test_download_model_modelscope_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # makes `import modelscope` fail
    with pytest.raises(ImportError, match=r"pip install -e '\.\[hub\]'"):
        env.download_model("Qwen/Qwen2.5-7B-Instruct", "modelscope", need_gb=0.0, platform="local")


def test_download_model_offline_finds_cached_copy(tmp_path, hf_fake):
    snapshot = make_hf_snapshot(tmp_path / "hf_home" / "hub", "org/m", "fff")
    assert env.download_model("org/m", "offline", snapshot_download=hf_fake) == snapshot
    assert hf_fake.calls == []


def test_download_model_offline_missing_model_explains(tmp_path, hf_fake):
    with pytest.raises(env.ModelNotAvailableOffline) as excinfo:
        env.download_model("Qwen/Qwen2.5-7B-Instruct", "offline", snapshot_download=hf_fake)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, FileNotFoundError)
    assert str(tmp_path / "hf_home" / "hub" / "models--Qwen--Qwen2.5-7B-Instruct") in message
    assert str(tmp_path / "ms_cache" / "models" / "Qwen" / "Qwen2___5-7B-Instruct") in message
    assert "COURSE_HUB" in message and "hf-mirror" in message and "modelscope" in message
    assert "config.json" in message
    assert hf_fake.calls == []


# --- environment report ------------------------------------------------------------------------


def test_detect_environment_report(monkeypatch, tmp_path):
    gpu = env.GpuInfo("Tesla T4", 14.7, (7, 5), False)
    monkeypatch.setattr(env, "gpu_info", lambda: gpu)
    monkeypatch.setattr(env, "detect_platform", lambda: "colab")
    report = env.detect_environment(get_profile("tiny"))
    assert report.platform == "colab"
    assert report.hub == "offline"  # tiny profile: no probing, no network
    assert report.gpu == gpu
    assert report.caches["HF_HOME"] == str(tmp_path / "hf_home")
    assert report.cpu_count >= 1 and report.ram_gb > 0 and report.free_disk_gb > 0
    rows = dict(report.rows())
    assert rows["gpu"] == "Tesla T4, 14.7 GiB, sm_75, no bf16"
    assert rows["MODELSCOPE_CACHE"] == str(tmp_path / "ms_cache")
    assert report.to_dict()["gpu"]["compute_capability"] == (7, 5)


def test_env_report_rows_without_gpu():
    report = env.EnvReport(
        "local", "3.11", "2.5", None, None, 4, None, "hf", {"HF_HOME": "/h"}, 3.0
    )
    rows = dict(report.rows())
    assert rows["gpu"] == "none (CPU only)"
    assert rows["cuda"] == "none" and rows["ram_gb"] == "unknown" and rows["HF_HOME"] == "/h"


def test_hf_endpoint_set_to_the_mirror_means_hf_mirror():
    probed = []
    hub = env.choose_hub(
        environ={"HF_ENDPOINT": "https://hf-mirror.com/"},
        platform="local",
        probe=lambda url: probed.append(url) or True,
    )
    assert hub == "hf-mirror" and probed == []
