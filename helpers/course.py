"""Run the course headless: execute every notebook in order and write a summary.

``make course`` calls this. Each run writes ``runs/<UTC timestamp>/`` with the executed
notebooks, ``summary.md`` and ``summary.json`` (per notebook: status, minutes, key figures).
Notebooks report key figures with :func:`record_figure`.

    python -m helpers.course                 # every notebook in notebooks/
    python -m helpers.course --only 00 01    # a subset, by number prefix
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIGURES_ENV_VAR = "COURSE_FIGURES_FILE"
OUTPUTS_ENV_VAR = "COURSE_OUTPUTS"


def outputs_dir() -> Path:
    """Where notebooks write what later notebooks read, decided here and nowhere else.

    ``$COURSE_OUTPUTS`` if set; on Colab, Google Drive when it is mounted (a fresh runtime keeps
    nothing else: every Colab badge opens one); on AutoDL, the data disk (the system disk is
    ~30 GB); elsewhere ``outputs/`` in the repository.
    """
    from helpers.env import AUTODL_DATA_DISK, COLAB_DRIVE, detect_platform, platform_path

    if os.environ.get(OUTPUTS_ENV_VAR):
        return Path(os.environ[OUTPUTS_ENV_VAR]).expanduser()
    platform = detect_platform()
    drive = platform_path(COLAB_DRIVE)
    if platform == "colab" and drive.is_dir():
        return drive / "llm-course" / "outputs"
    if platform == "autodl":
        return platform_path(AUTODL_DATA_DISK) / "llm-course" / "outputs"
    return REPO_ROOT / "outputs"


def record_figure(name: str, value: object) -> object:
    """Report a key figure of this notebook to ``make course``'s summary; returns ``value``.

    Outside a course run (``COURSE_FIGURES_FILE`` unset) it only returns the value.
    """
    target = os.environ.get(FIGURES_ENV_VAR)
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"name": name, "value": value}, default=str) + "\n")
    return value


# What a notebook leaves for later ones: name -> (notebook that makes it, path under outputs_dir()).
ARTIFACTS = {
    "data": ("01", "data/train.jsonl"),
    "baseline": ("02", "eval/baseline_{profile}.json"),
    "adapter": ("03", "adapters/{profile}/adapter_config.json"),
    "results": ("04", "eval/results_{profile}.json"),
    "gguf": ("05", "gguf/{profile}/model-q4_k_m.gguf"),
    "preference_pairs": ("10", "preference/train.trl.jsonl"),
}
# What each notebook cannot run without (01-03 fall back to the shipped data and re-measure).
NEEDS = {
    "04": ("adapter",),
    "05": ("adapter", "results"),
    "06": ("gguf",),
    "07": ("adapter",),
    "08": (),  # trains its own adapters from the shipped data
    "09": (),  # trains every method from the base model on 01's data or the shipped data
    "10": ("adapter",),
}
# Minutes per notebook and profile: measured for tiny and cpu-demo (README), estimated on GPUs.
MINUTES = {
    "tiny": {
        "00": 1,
        "01": 1,
        "02": 1,
        "03": 1,
        "04": 1,
        "05": 1,
        "06": 1,
        "07": 2,
        "08": 2,
        "09": 3,
        "10": 4,
        "11": 1,
    },
    "cpu-demo": {
        "00": 1,
        "01": 1,
        "02": 3,
        "03": 12,
        "04": 13,
        "05": 10,
        "06": 2,
        "07": 30,
        "08": 15,
        "09": 15,
        "10": 25,
        "11": 2,  # 11: its 2-process demo runs the tiny model on CPU everywhere
    },
    "t4": {
        "00": 5,
        "01": 4,  # 01 §8.1: the instruct model paraphrases 300 messages
        "02": 4,
        "03": 22,
        "04": 32,
        "05": 20,
        "06": 10,
        "07": 15,
        "08": 30,
        "09": 25,
        "10": 40,
        "11": 2,
    },
    "24g": {
        "00": 15,
        "01": 6,  # 01 §8.1: loading the 7B and 300 paraphrases
        "02": 5,
        "03": 30,
        "04": 38,
        "05": 30,
        "06": 15,
        "07": 20,
        "08": 30,
        "09": 30,
        "10": 60,
        "11": 2,
    },
}


class MissingArtifactError(FileNotFoundError):
    """A notebook needs what an earlier notebook writes, and it is not there."""


def artifact_path(name: str, profile_name: str) -> Path:
    """Where artifact ``name`` (see :data:`ARTIFACTS`) of a profile lives."""
    return outputs_dir() / ARTIFACTS[name][1].format(profile=profile_name)


def _upstream(notebook: str) -> list[str]:
    """The notebooks to run, in order, so that ``notebook``'s needs exist, itself included."""
    chain: list[str] = []
    for need in NEEDS.get(notebook, ()):
        for nb in _upstream(ARTIFACTS[need][0]):
            if nb not in chain:
                chain.append(nb)
    return [*chain, notebook]


def require(*names: str, profile_name: str) -> dict[str, Path]:
    """The paths of the named artifacts; if one is missing, say who makes it and how to rebuild.

    On Colab every notebook opens a fresh runtime, so outputs persist only on Google Drive
    (the install cell offers to mount it); ``rebuild`` makes what is missing here, headless.
    """
    paths = {name: artifact_path(name, profile_name) for name in names}
    missing = [name for name, path in paths.items() if not path.exists()]
    if missing:
        name = missing[0]
        notebook = ARTIFACTS[name][0]
        chain = [nb for nb in _upstream(notebook) if _missing_from(nb, profile_name)]
        minutes = sum(MINUTES.get(profile_name, {}).get(nb, 0) for nb in chain)
        raise MissingArtifactError(
            f"The {name} ({paths[name]}) is missing: notebook {notebook} makes it. Run "
            f"{', '.join(chain)} first (about {minutes} min on {profile_name}), or rebuild it "
            f"here, headless: from helpers import course; course.rebuild({name!r}). On Colab, "
            "mount Google Drive in the install cell so that outputs outlive the runtime."
        )
    return paths


def _missing_from(notebook: str, profile_name: str) -> bool:
    made = [name for name, (nb, _) in ARTIFACTS.items() if nb == notebook]
    return not made or not all(artifact_path(name, profile_name).exists() for name in made)


def rebuild(name: str) -> list[NotebookResult]:
    """Run the notebooks that make artifact ``name`` (and what they need), headless, in order."""
    from helpers.profiles import active_profile

    profile = active_profile().name
    chain = [nb for nb in _upstream(ARTIFACTS[name][0]) if _missing_from(nb, profile)]
    _, results = run_course(only=chain)
    failed = [r for r in results if r.status != "ok"]
    if failed:
        raise RuntimeError(f"Rebuilding {name} failed in {failed[0].notebook}: {failed[0].error}")
    return results


@dataclass
class NotebookResult:
    """What happened to one notebook in a course run."""

    notebook: str
    status: str  # "ok" or "failed"
    minutes: float
    figures: dict = field(default_factory=dict)
    error: str = ""


def course_notebooks(notebooks_dir: Path, only: list[str] | None = None) -> list[Path]:
    """The course notebooks in order (solutions excluded), optionally filtered by prefix."""
    paths = sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(prefix) for prefix in only)]
    return paths


def _error_summary(exc: Exception) -> str:
    """The last line of a cell error: what a reader of the summary needs first."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


def execute_notebook(
    path: Path, out_dir: Path, timeout: int = 3600, estimate: float | None = None
) -> NotebookResult:
    """Execute one notebook with its own kernel; save the executed copy into ``out_dir``.

    A progress bar counts its code cells, with the elapsed time and ``estimate`` (minutes).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError
    from tqdm.auto import tqdm

    figures_file = out_dir / f"{path.stem}.figures.jsonl"
    figures_file.unlink(missing_ok=True)
    os.environ[FIGURES_ENV_VAR] = str(figures_file)  # inherited by the kernel
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    code_cells = sum(cell.cell_type == "code" for cell in notebook.cells)
    bar = tqdm(
        total=code_cells,
        desc=f"{path.stem} (estimate ~{estimate:g} min)" if estimate else path.stem,
        unit=" cells",
        mininterval=10,  # in a log, a line every 10 s at most
        bar_format="{desc}: {n_fmt}/{total_fmt} cells, {elapsed} elapsed",
    )
    client.on_cell_executed = lambda **_: bar.update()
    start = time.perf_counter()
    status, error = "ok", ""
    try:
        client.execute()
    except DeadKernelError:  # a crash (SIGILL, SIGSEGV) or the OOM killer: no traceback exists
        status, error = "failed", "the kernel died while a cell ran (crash or out of memory)"
    except Exception as exc:  # a failing cell: record it, keep the partial notebook
        status, error = "failed", _error_summary(exc)
    finally:
        os.environ.pop(FIGURES_ENV_VAR, None)
        bar.close()
    minutes = (time.perf_counter() - start) / 60
    nbformat.write(notebook, out_dir / path.name)
    figures = {}
    if figures_file.exists():
        for line in figures_file.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            figures[item["name"]] = item["value"]
        figures_file.unlink()
    return NotebookResult(path.stem, status, round(minutes, 2), figures, error)


def write_summary(results: list[NotebookResult], out_dir: Path, profile: str) -> Path:
    """Write summary.json and summary.md; return the Markdown file's path."""
    (out_dir / "summary.json").write_text(
        json.dumps({"profile": profile, "notebooks": [asdict(r) for r in results]}, indent=2),
        encoding="utf-8",
    )
    lines = [
        f"# Course run ({profile})",
        "",
        "| notebook | status | minutes | key figures |",
        "|---|---|---|---|",
    ]
    for r in results:
        figures = "; ".join(f"{k}={v}" for k, v in r.figures.items())
        detail = f"{figures} {r.error}".strip()
        lines.append(f"| {r.notebook} | {r.status} | {r.minutes:.2f} | {detail} |")
    lines += _before_after(profile)
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _before_after(profile: str) -> list[str]:
    """Markdown lines: every variant 04 and 05 measured (base, fine-tuned, ...) on held-out data."""
    from helpers.evaluation.results import CORE_METRICS, results_path

    path = results_path(profile)
    if not path.exists():
        return ["", f"No results file yet ({path}): notebook 04 writes the before/after table."]
    variants = json.loads(path.read_text(encoding="utf-8"))["variants"]
    metrics = [m for m in CORE_METRICS if any(m in v["metrics"] for v in variants.values())]
    lines = [
        "",
        f"## Before and after ({profile}, held-out data; {path})",
        "",
        "| variant | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for name, variant in variants.items():
        values = [variant["metrics"].get(m) for m in metrics]
        cells = ["" if v is None else f"{v:.3f}" for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def run_course(
    notebooks_dir: Path = REPO_ROOT / "notebooks",
    runs_dir: Path = REPO_ROOT / "runs",
    only: list[str] | None = None,
    timeout: int = 3600,
) -> tuple[Path, list[NotebookResult]]:
    """Execute the course notebooks in order; return the run directory and the results."""
    from helpers.profiles import active_profile

    profile = active_profile().name
    # Kernels start as "python": make that this interpreter (the venv's), wherever we run.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    paths = course_notebooks(notebooks_dir, only)
    if not paths:
        raise FileNotFoundError(f"No notebooks matching {only or '*'} in {notebooks_dir}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = runs_dir / stamp
    out_dir.mkdir(parents=True, exist_ok=False)
    estimates = MINUTES.get(profile, {})
    total = sum(estimates.get(p.name[:2], 0) for p in paths)
    print(f"Course run on profile {profile!r}: {len(paths)} notebook(s), ~{total} min -> {out_dir}")
    results = []
    for i, path in enumerate(paths, 1):
        print(f"[{i}/{len(paths)}] {path.name}", flush=True)
        result = execute_notebook(path, out_dir, timeout, estimates.get(path.name[:2]))
        print(f"    {result.status} in {result.minutes:.2f} min {result.error}", flush=True)
        results.append(result)
    summary = write_summary(results, out_dir, profile)
    print(summary.read_text(encoding="utf-8"))
    return out_dir, results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: run the course; exit 1 if any notebook failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 00 03")
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)
    _, results = run_course(runs_dir=args.runs_dir, only=args.only, timeout=args.timeout)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
