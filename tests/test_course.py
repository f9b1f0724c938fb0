"""The headless course runner behind `make course`: order, statuses, figures and summary."""

import json
import time
from pathlib import Path

import nbformat
import pytest

from helpers import course


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def test_record_figure_outside_a_run_only_returns_the_value(monkeypatch):
    monkeypatch.delenv(course.FIGURES_ENV_VAR, raising=False)
    assert course.record_figure("x", 3) == 3


def test_course_notebooks_are_ordered_and_exclude_solutions(tmp_path):
    for name in ["01_b.ipynb", "00_a.ipynb", "notes.ipynb"]:
        _notebook(tmp_path / name, "1")
    (tmp_path / "solutions").mkdir()
    _notebook(tmp_path / "solutions" / "00_a_solutions.ipynb", "1")
    assert [p.name for p in course.course_notebooks(tmp_path)] == ["00_a.ipynb", "01_b.ipynb"]
    assert [p.name for p in course.course_notebooks(tmp_path, ["01"])] == ["01_b.ipynb"]


def test_run_course_writes_executed_notebooks_and_a_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    monkeypatch.setenv(course.OUTPUTS_ENV_VAR, str(tmp_path / "outputs"))
    monkeypatch.setitem(course.MINUTES, "tiny", {"00": 3, "01": 1})
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(
        nbs / "00_ok.ipynb",
        "from helpers.course import record_figure\nrecord_figure('answer', 6 * 7)",
    )
    _notebook(nbs / "01_fails.ipynb", "assert 1 + 1 == 3, 'arithmetic is broken'")
    out_dir, results = course.run_course(nbs, tmp_path / "runs", timeout=120)

    assert [(r.notebook, r.status) for r in results] == [("00_ok", "ok"), ("01_fails", "failed")]
    assert results[0].figures == {"answer": 42}
    assert "arithmetic is broken" in results[1].error
    executed = nbformat.read(out_dir / "00_ok.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["data"]["text/plain"] == "42"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["profile"] == "tiny"
    assert [n["status"] for n in summary["notebooks"]] == ["ok", "failed"]
    markdown = (out_dir / "summary.md").read_text()
    assert "| 00_ok | ok |" in markdown and "answer=42" in markdown
    assert "notebook 04 writes the before/after table" in markdown  # no results file yet
    assert not list(out_dir.glob("*.figures.jsonl"))
    err = capsys.readouterr().err  # a progress bar per notebook: cells, elapsed, estimate
    assert "00_ok (estimate ~3 min): 1/1 cells" in err and "01_fails (estimate ~1 min)" in err


def test_the_summary_ends_with_the_before_after_table(tmp_path, monkeypatch):
    monkeypatch.setenv(course.OUTPUTS_ENV_VAR, str(tmp_path))
    results = tmp_path / "eval" / "results_cpu-demo.json"
    results.parent.mkdir()
    variants = {
        "base": {"metrics": {"json_valid": 0.0, "perplexity": 9.5}},
        "fine-tuned": {"metrics": {"json_valid": 0.93, "perplexity": 2.25}},
    }
    results.write_text(json.dumps({"variants": variants}))
    result = course.NotebookResult("04_evaluation", "ok", 12.0)
    markdown = course.write_summary([result], tmp_path, "cpu-demo").read_text().splitlines()
    assert markdown[-4:] == [
        "| variant | json_valid | perplexity |",
        "|---|---|---|",
        "| base | 0.000 | 9.500 |",
        "| fine-tuned | 0.930 | 2.250 |",
    ]


def test_run_course_without_matching_notebooks_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    with pytest.raises(FileNotFoundError, match="No notebooks"):
        course.run_course(tmp_path, tmp_path / "runs", only=["07"])


DIES = "import os, signal\nos.kill(os.getpid(), signal.SIGILL)  # what an AMX build did"


def test_run_course_fails_at_once_when_a_kernel_dies(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "00_dies.ipynb", "1 + 1", DIES, "'never reached'")
    _notebook(nbs / "01_next.ipynb", "6 * 7")
    _, results = course.run_course(nbs, tmp_path / "runs", timeout=600)
    assert [(r.notebook, r.status) for r in results] == [("00_dies", "failed"), ("01_next", "ok")]
    assert "kernel died" in results[0].error and results[0].minutes < 1, results[0]


def test_nbval_fails_at_once_when_a_kernel_dies(pytester):
    """Without the root conftest's check, nbval waits for a dead kernel until its cell timeout."""
    root = Path(__file__).resolve().parent.parent
    pytester.makeconftest((root / "conftest.py").read_text(encoding="utf-8"))
    _notebook(pytester.path / "dies.ipynb", "1 + 1", DIES, "'never reached'")
    start = time.perf_counter()
    result = pytester.runpytest_subprocess(
        "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", "dies.ipynb", timeout=300
    )
    elapsed = time.perf_counter() - start
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*the kernel was killed by SIGILL*"])
    result.stdout.fnmatch_lines(["*Kernel dead on test start*"])
    result.stdout.fnmatch_lines(["cpu: *SIMD:*"])  # the header names the CPU
    assert elapsed < 120, f"took {elapsed:.0f} s"
