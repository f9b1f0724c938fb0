"""The GPU profiles rehearsed on CPU: notebooks 00-06 under t4 (Colab) and 24g (AutoDL).

helpers.rehearsal lays out a tiny random Qwen2 exactly like a hub download (HF layout in Colab's
home for t4, ModelScope's ``___`` layout on AutoDL's data disk for 24g), with Qwen2.5's chat
template and sampling defaults, and sandboxes the platform's disks and Drive. Each notebook
runs in a fresh kernel, in order, as ``make course`` runs them; solutions run under t4. The
last tests put a blocker back and a disk too small in, and see the rehearsal fail.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from helpers import course, rehearsal
from helpers.profiles import get_profile

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
COURSE = ["00", "01", "02", "03", "04", "05", "06"]
WHERE_OUTPUTS_GO = {  # inside the sandbox: Colab's Google Drive, AutoDL's data disk
    "t4": "content/drive/MyDrive/llm-course/outputs",
    "24g": "root/autodl-tmp/llm-course/outputs",
}


@contextmanager
def environment(changes: dict[str, str | None]):
    """os.environ with ``changes`` applied (None unsets), restored afterwards."""
    saved = {key: os.environ.get(key) for key in changes}
    try:
        for key, value in changes.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def test_sandboxed_disks_count_what_is_written_under_their_quota(tmp_path, monkeypatch):
    monkeypatch.setenv(rehearsal.ROOT_ENV_VAR, str(tmp_path))
    monkeypatch.setenv(rehearsal.DISKS_ENV_VAR, "/=30,/root/autodl-tmp=50")
    data = rehearsal.platform_path("/root/autodl-tmp")
    assert data == tmp_path / "root" / "autodl-tmp"
    data.mkdir(parents=True)
    (data / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "root" / "notes.txt").write_bytes(b"y" * 10)
    disk = rehearsal.disk_usage(data / "not-yet" / "there")  # the nearest quota decides
    assert (disk.total, disk.used) == (50 * rehearsal.GB, 1000)
    system = rehearsal.disk_usage(tmp_path / "root")
    assert (system.total, system.used) == (30 * rehearsal.GB, 10)  # the data disk is not in it


def test_only_gpu_profiles_are_rehearsed_and_their_real_values_are_kept():
    with pytest.raises(ValueError, match="already runs on CPU"):
        rehearsal.rehearse(get_profile("tiny"))
    t4, rehearsed = get_profile("t4"), rehearsal.rehearse(get_profile("t4"))
    changed = {name for name, *_ in rehearsed.substitutions}
    assert {"device", "dtype", "optimizer", "max_steps"} <= changed
    kept = ["method", "model_id", "revision", "max_length", "system_prompt", "lora_r"]
    assert all(getattr(rehearsed, f) == getattr(t4, f) for f in kept)
    assert rehearsal.rehearse(get_profile("24g")).dtype == "bfloat16"  # CPU autocast runs bf16
    assert not rehearsed.real_weights and rehearsed.rehearsal


def _run(name: str, root: Path, notebooks: Path = NOTEBOOKS, only=COURSE, **disks):
    with environment(rehearsal.prepare(name, root, disks or None)):
        return course.run_course(notebooks, root / "runs", only=only, timeout=900)


@pytest.fixture(scope="module", params=["t4", "24g"])
def rehearsed(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(f"rehearsal-{name}")
    out_dir, results = _run(name, root)
    solutions = []
    if name == "t4":  # solutions need 00-06's outputs; one platform is enough
        solutions = _run(name, root, NOTEBOOKS / "solutions")[1]
    return name, root, out_dir, results, solutions


def test_every_notebook_runs_in_a_fresh_kernel_in_order(rehearsed):
    name, _, _, results, solutions = rehearsed
    failed = [(r.notebook, r.error) for r in results + solutions if r.status != "ok"]
    assert not failed, failed
    assert [r.notebook[:2] for r in results] == COURSE
    if name == "t4":
        assert len(solutions) == len(COURSE)
    minutes = {r.notebook[:2]: r.minutes for r in results}
    print(f"{name} rehearsal minutes per notebook: {minutes}")


def test_work_lands_where_a_fresh_runtime_finds_it(rehearsed):
    name, root, *_ = rehearsed
    outputs = root / WHERE_OUTPUTS_GO[name]
    profile_files = [
        outputs / "adapters" / name / "adapter_config.json",
        outputs / "eval" / f"results_{name}.json",
        outputs / "gguf" / name / "model-q4_k_m.gguf",
    ]
    assert all(p.exists() for p in profile_files), [p for p in profile_files if not p.exists()]
    assert not (outputs / "gguf" / name / "model-f16.gguf").exists()  # intermediate deleted


def test_the_model_was_found_where_the_platform_downloads_it_and_nowhere_else(rehearsed):
    name, root, *_ = rehearsed
    home_cache = root / "root" / ".cache"
    if name == "24g":  # nothing went to the 30 GB system disk: caches were on the data disk
        assert (
            not (home_cache / "modelscope").exists() and not (home_cache / "huggingface").exists()
        )
    snapshots = list(root.rglob("config.json"))
    model_copies = {p.parent for p in snapshots if "Qwen" in str(p)}
    assert len(model_copies) == 1, model_copies  # one download, every notebook found it


def test_each_substitution_is_named_in_the_notebooks(rehearsed):
    name, _, out_dir, _, _ = rehearsed
    executed = nbformat.read(out_dir / "03_sft_qlora.ipynb", as_version=4)
    text = "".join(
        o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs
    )
    assert f"Rehearsal of {name} on the CPU" in text
    for field, real, here, _ in rehearsal.rehearse(get_profile(name)).substitutions:
        assert f"{field}: {real} -> {here}" in text, field


def _copy_of_00(root: Path, edit) -> Path:
    """notebooks/00 with one cell's source edited, in a folder of its own."""
    folder = root / "edited"
    folder.mkdir()
    nb = nbformat.read(NOTEBOOKS / "00_setup.ipynb", as_version=4)
    for cell in nb.cells:
        cell.source = edit(cell.source)
    nbformat.write(nb, folder / "00_setup.ipynb")
    return folder


def test_the_rehearsal_fails_when_the_qwen_template_blocker_is_put_back(tmp_path):
    """Qwen2.5's hub template has no {% generation %}: loaded as it is, 00's self-check fails."""

    def hub_template(source: str) -> str:
        return source.replace(
            "model, tokenizer = models.load_model(PROFILE)",
            "model, _ = models.load_model(PROFILE)\n"
            "from transformers import AutoTokenizer\n"
            "tokenizer = AutoTokenizer.from_pretrained(models.model_path(PROFILE))",
        )

    folder = _copy_of_00(tmp_path, hub_template)
    _, (result,) = _run("t4", tmp_path, folder, only=["00"])
    assert result.status == "failed" and "TRL 才能只训练回答" in result.error, result


def test_a_data_disk_too_small_for_the_7b_stops_00_with_the_fix(tmp_path):
    _, (result,) = _run("24g", tmp_path, only=["00"], **{"/root/autodl-tmp": 10})
    assert result.status == "failed" and "enlarge the data disk" in result.error, result
