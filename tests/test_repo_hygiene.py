"""Repository hygiene: clean notebooks, the skeleton, the Colab install cell, README badges."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

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
def test_colab_install_cell_is_guarded_and_agrees_with_requirements(path):
    code = [_source(c) for c in _cells(path) if c["cell_type"] == "code"]
    installs = [c for c in code if "pip install" in c]
    assert len(installs) == 1, "exactly one install cell"
    cell = installs[0]
    assert 'if "google.colab" in sys.modules:' in cell, "the install cell runs only on Colab"
    # the course package, optionally with extras: -e . or -e '.[gguf]'
    assert re.search(r"pip install -q -e (\.|'\.\[[\w,-]+\]')(\s|$)", cell), "installs the course"
    # Any package named explicitly must be spelled as in requirements.txt.
    reqs = _requirement_names()
    for line in cell.splitlines():
        if "pip install" in line:
            for token in line.split("pip install", 1)[1].split():
                if token.startswith("-") or token.strip("'").startswith("."):
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
