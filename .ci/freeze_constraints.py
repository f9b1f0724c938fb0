"""Freeze the versions a green CI run tested into constraints.txt (and requirements-colab.txt).

requirements.txt holds floors; constraints.txt pins what CI's venv ran, so every install path
(make, environment.yml) gets the tested versions: ``pip install -c constraints.txt -e .``.
Run it with the interpreter of the venv that CI built and tested (``make install-dev`` as in
.ci/run), from the repository root:

    .venv/bin/python .ci/freeze_constraints.py           # rewrite both files
    .venv/bin/python .ci/freeze_constraints.py --check   # exit 1 if either would change

Pinned: every installed distribution that requirements.txt, the extras in EXTRAS and
llama-cpp-python pull in, found by walking the installed metadata. Left to the platform: torch,
the CUDA wheels, and what only they pull in (torch is CI's CPU build, Colab's CUDA build,
AutoDL's image). A pin whose Requires-Python leaves out some Python the course supports carries
a marker, so there the floor applies instead of a failed install. requirements-colab.txt keeps
its own choice of lines; only the versions of its ``==`` lines are refreshed from the new pins.

Moving the pins forward: run CI with floors only (``CONSTRAINTS= bash .ci/run`` installs the
newest versions), and once it is green run this script, update the "tested" notes in
requirements.txt (tests/test_repo_hygiene.py checks them) and commit.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "constraints.txt"
COLAB = REPO / "requirements-colab.txt"
# bench (lm-eval: GPU + internet, never installed by make or CI) is left out.
EXTRAS = ("dev", "cpu-demo", "gguf", "hub")
# Installed per platform: never pinned, and what only they require is not pinned either.
PLATFORM = re.compile(r"^(torch|triton|pytorch-triton.*|nvidia-.*|cuda-.*)$")
COMMAND = ".venv/bin/python .ci/freeze_constraints.py"
BUILT_BY = "make install-dev, as .ci/run does"
# Pythons the course supports (requires-python >=3.10), to decide which pins need a marker.
PYTHONS = [f"3.{minor}.{patch}" for minor in range(10, 16) for patch in (0, 1, 5, 20)]


def roots() -> list[Requirement]:
    """What the course asks for: requirements.txt, the extras and llama-cpp-python."""
    from helpers.quantize.install import LLAMA_CPP_REQUIREMENT

    lines = [
        line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()
    ]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    specs = [line for line in lines if line] + [s for e in EXTRAS for s in extras[e]]
    return [Requirement(spec) for spec in [*specs, LLAMA_CPP_REQUIREMENT]]


def walk(
    start: list[Requirement], through_platform: bool = False
) -> tuple[dict[str, metadata.Distribution], set[str]]:
    """Installed distributions reachable from ``start``, and the names not installed.

    Unless ``through_platform``, the walk stops at torch and the CUDA wheels (not included).
    """
    found: dict[str, metadata.Distribution] = {}
    missing: set[str] = set()
    todo = [(req, "") for req in start]
    seen: set[tuple[str, str]] = set()
    while todo:
        req, extra = todo.pop()
        name = canonicalize_name(req.name)
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        if PLATFORM.match(name) and not through_platform:
            continue
        try:
            dist = found.get(name) or metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.add(name)
            continue
        found[name] = dist
        for wanted in ["", *sorted(req.extras)]:
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            todo += [(Requirement(r), wanted) for r in dist.requires or []]
    return found, missing


def python_marker(dist: metadata.Distribution) -> str:
    """A marker limiting the pin to the Pythons its Requires-Python accepts, or ''."""
    spec = SpecifierSet(dist.metadata.get("Requires-Python") or "")
    clauses = [c for c in spec if not all(Version(py) in c for py in PYTHONS)]
    return " and ".join(f'python_full_version {c.operator} "{c.version}"' for c in clauses)


def pin(name: str, dist: metadata.Distribution) -> str:
    """``name==version``, with a Python marker where the version does not install everywhere."""
    marker = python_marker(dist)
    return f"{name}=={dist.version}" + (f" ; {marker}" if marker else "")


def constraints_text(today: str, built_by: str) -> str:
    """The whole of constraints.txt for this environment."""
    start = roots()
    found, missing = walk(start)
    named = {canonicalize_name(r.name) for r in start} & set(found)
    platform_dists, _ = walk(
        [Requirement(n) for n in _installed_names() if PLATFORM.match(n)], through_platform=True
    )
    only_platform = sorted(n for n in platform_dists if not PLATFORM.match(n) and n not in found)
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    prefix = Path(sys.prefix)
    where = prefix.relative_to(REPO) if prefix.is_relative_to(REPO) else prefix
    head = [
        "# The versions CI tested, for every install path: pip install -c constraints.txt -e .",
        f"# Generated by `{COMMAND}` on {today}; do not edit by hand.",
        f"# Frozen from the venv {where} (Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, torch {torch}),",
        f"# built by {built_by}.",
        f"# Pinned: what requirements.txt, llama-cpp-python and the extras {', '.join(EXTRAS)} "
        "pull in.",
        "# Left to the platform (CPU build in CI, Colab's CUDA build, AutoDL's image): torch,",
        "# nvidia-*, triton, cuda-*, and what only they pull in: "
        + (", ".join(only_platform) or "nothing")
        + ".",
        "# Not pinned, not installed where this was frozen: "
        + (", ".join(sorted(missing)) or "none")
        + ".",
        "# A pin with a python_full_version marker does not install on every Python the course",
        "# supports; there the floors in requirements.txt apply.",
        "# Moving the pins forward: `CONSTRAINTS= bash .ci/run` (floors only, so the newest",
        "# versions); when it is green, run the command above, update the tested notes in",
        "# requirements.txt (tests/test_repo_hygiene.py checks them) and commit.",
    ]
    body = ["", "# requirements.txt, the extras and llama-cpp-python"]
    body += [pin(n, found[n]) for n in sorted(named)]
    body += ["", "# what they pull in"]
    body += [pin(n, found[n]) for n in sorted(set(found) - named)]
    return "\n".join(head + body) + "\n"


def _installed_names() -> list[str]:
    return sorted({canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()})


def colab_text(constraints: str) -> str:
    """requirements-colab.txt with each ``name==version`` line moved to the new pin."""
    pins = {}
    for line in constraints.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split(";")[0].strip().split("==")
            pins[name] = version

    def repin(match: re.Match) -> str:
        name = canonicalize_name(match[1])
        if name not in pins:
            raise SystemExit(f"{COLAB.name} pins {match[1]}, which constraints.txt does not pin")
        return f"{match[1]}=={pins[name]}"

    return re.sub(r"^([\w.-]+)==([\w.+!-]+)", repin, COLAB.read_text(), flags=re.M)


def _without_date(text: str) -> str:
    return re.sub(r" on \d{4}-\d{2}-\d{2};", "", text)


def main(argv: list[str] | None = None) -> int:
    """Write constraints.txt and refresh requirements-colab.txt, or check that they are current."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="only report files that would change")
    parser.add_argument("--built-by", default=BUILT_BY, help=f"how the venv was built ({BUILT_BY})")
    args = parser.parse_args(argv)
    constraints = constraints_text(datetime.date.today().isoformat(), args.built_by)
    outputs = {CONSTRAINTS: constraints, COLAB: colab_text(constraints)}
    stale = [
        path
        for path, text in outputs.items()
        if not path.exists() or _without_date(path.read_text()) != _without_date(text)
    ]
    if args.check:
        names = ", ".join(path.name for path in stale)
        print(f"would change: {names}" if stale else "constraints are current")
        return 1 if stale else 0
    for path in stale:
        path.write_text(outputs[path])
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
