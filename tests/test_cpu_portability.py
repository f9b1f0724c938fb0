"""The course on any x86-64 CPU with AVX2: llama.cpp's build, bitsandbytes' 4-bit CPU paths.

CI runners and learners' machines are different CPUs (AVX2 only; AVX-512 with BF16; AMX). A
native llama.cpp build died with SIGILL on an AMX host, and bitsandbytes' AVX-512-BF16 kernel
failed on the tiny model's 352-wide MLP. These tests run on whatever CPU CI has; the test log's
header (root conftest.py) names it.
"""

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import cpu
from helpers.profiles import get_profile
from helpers.quantize import install

PORTABLE = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
AVX512 = PORTABLE.replace("BMI2 = 1 |", "BMI2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 |")
AMX = AVX512.replace("AVX512_VNNI = 1 |", "AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 |")
AVX2_CPU = {"pni", "ssse3", "avx", "avx2", "f16c", "fma", "bmi2"}
AMX_CPU = AVX2_CPU | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}


# ---------------------------------------------------------------------------- llama.cpp


def test_system_info_is_read_into_instruction_sets():
    assert install.compiled_isa(PORTABLE) == install.PORTABLE_ISA
    assert install.non_portable_isa(PORTABLE) == set()
    assert install.non_portable_isa(AMX) == {"AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8"}


def test_an_amx_build_is_refused_even_where_the_cpu_reports_amx():
    with pytest.raises(install.NativeBuildError, match=r"AMX.*SIGILL.*helpers.quantize.install"):
        install.check_llama_build(AMX, AMX_CPU)
    with pytest.raises(install.NativeBuildError, match="AMX"):
        install.check_llama_build(AMX, set())  # not Linux: no flags to compare, AMX still refused


def test_a_build_for_a_newer_cpu_is_refused_and_the_portable_one_runs_anywhere():
    with pytest.raises(install.NativeBuildError, match="AVX512, AVX512_VNNI"):
        install.check_llama_build(AVX512, AVX2_CPU)  # a venv copied from an AVX-512 machine
    install.check_llama_build(AVX512, AMX_CPU)  # native AVX-512 on an AVX-512 CPU runs
    install.check_llama_build(PORTABLE, AVX2_CPU)
    install.check_llama_build(PORTABLE, AMX_CPU)


def test_load_llama_cpp_checks_the_build_before_anything_runs(monkeypatch):
    llama_cpp = install.load_llama_cpp()
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: AMX.encode())
    with pytest.raises(install.NativeBuildError):
        install.load_llama_cpp()


def test_the_installed_llama_cpp_is_the_portable_build():
    info = install.llama_build_info()
    assert info is not None, f"llama-cpp-python is not installed: {install.INSTALL_COMMAND}"
    assert install.non_portable_isa(info) == set(), (
        f"{info}: rebuild with {install.INSTALL_COMMAND}"
    )
    if cpu.cpu_flags() & {"avx2"}:
        assert {"AVX2", "FMA", "F16C"} <= install.compiled_isa(info), info


def test_the_installed_llama_cpp_contains_no_avx512_or_amx_instruction():
    """Disassemble the shared libraries: the build flags are what the compiler really obeyed."""
    import llama_cpp

    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*.so"))
    assert libs, "llama-cpp-python ships its libraries in llama_cpp/lib"
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils, installed with the C compiler llama.cpp needs) is missing"
    for lib in libs:
        asm = subprocess.run([objdump, "-d", str(lib)], capture_output=True, text=True).stdout
        assert "%zmm" not in asm, f"{lib.name} uses AVX-512 registers"
        assert "tilezero" not in asm and "tileloadd" not in asm, f"{lib.name} uses AMX"


def test_install_builds_from_source_past_pip_s_wheel_cache(monkeypatch):
    calls = []
    infos = iter([AMX, PORTABLE])  # native before, portable after
    monkeypatch.setattr(install, "llama_build_info", lambda: next(infos))
    monkeypatch.setattr(install.subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=on")
    assert install.install_llama_cpp() == PORTABLE
    ((cmd, kwargs),) = calls
    assert {"--no-cache-dir", "--force-reinstall", "--no-deps"} <= set(cmd)
    assert cmd[cmd.index("--no-binary") + 1] == "llama-cpp-python"
    cmake = kwargs["env"]["CMAKE_ARGS"]
    assert cmake.startswith("-DGGML_CUDA=on ") and cmake.endswith(install.PORTABLE_CMAKE_ARGS)
    assert "-DGGML_NATIVE=OFF" in cmake and "-DGGML_AMX_INT8=OFF" in cmake


def test_install_leaves_a_portable_build_alone_and_builds_a_missing_one(monkeypatch):
    calls = []
    monkeypatch.setattr(install.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(install, "llama_build_info", lambda: PORTABLE)
    install.install_llama_cpp()
    assert calls == []
    infos = iter([None, PORTABLE])
    monkeypatch.setattr(install, "llama_build_info", lambda: next(infos))
    install.install_llama_cpp()
    assert len(calls) == 1 and "--force-reinstall" not in calls[0]


# ---------------------------------------------------------------------------- bitsandbytes


def _linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_every_linear_size_of_the_tiny_model_is_a_multiple_of_64(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    sizes = {n: (m.in_features, m.out_features) for n, m in _linears(model).items()}
    assert sizes and all(i % 64 == 0 and o % 64 == 0 for i, o in sizes.values()), sizes


def test_4bit_inference_runs_on_this_cpu_and_matches_the_dequantized_weights(tiny_dir):
    """The packed AVX-512-BF16 kernel where the CPU has it, the generic path elsewhere."""
    import bitsandbytes.functional as bnbf
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM

    from helpers.quantize import load_bnb

    model, tokenizer = load_bnb(tiny_dir, 4)
    reference = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    ref_layers = _linears(reference)
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    assert quantized
    for name, layer in quantized.items():  # the very weights bitsandbytes stores, in fp32
        weight = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        ref_layers[name].weight.data = weight.float()
    ids = tokenizer("我的订单 A10086 还没发货", return_tensors="pt").input_ids
    with torch.no_grad():
        got, want = model(ids).logits.float(), reference(ids).logits
    packed = [
        bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
        for m in quantized.values()
    ]
    assert all(packed) == cpu.bnb_packed_cpu_path() and len(set(packed)) == 1, packed
    # the packed kernel computes in bfloat16 (8 bits of mantissa); the generic path in float32
    tolerance = 0.05 if cpu.bnb_packed_cpu_path() else 1e-4
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= tolerance * scale
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.fixture(scope="module")
def odd_model_dir(tmp_path_factory):
    """A small Qwen2 whose MLP is 352 wide, as the tiny model was when bitsandbytes tripped."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("odd")
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def _load_4bit(path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quant, dtype=torch.float32, device_map={"": "cpu"}
    )
    return model.eval()


def test_the_guard_reroutes_exactly_the_layers_the_packed_kernel_cannot_take(
    odd_model_dir, monkeypatch
):
    model = _load_4bit(odd_model_dir)
    assert cpu.bnb_packed_incompatible(model) == ["model.layers.0.mlp.down_proj"]  # in = 352
    monkeypatch.setattr(cpu, "bnb_packed_cpu_path", lambda: True)  # as on an AVX-512-BF16 CPU
    with pytest.warns(UserWarning, match=r"down_proj.*support_avx512bf16_for_cpu = False"):
        assert cpu.guard_bnb_cpu(model) == ["model.layers.0.mlp.down_proj"]
    assert model.model.layers[0].mlp.down_proj.support_avx512bf16_for_cpu is False
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_without_the_guard_the_packed_kernel_fails_where_this_cpu_takes_it(odd_model_dir):
    """The upstream bug the guard works around; on CPUs without AVX-512-BF16 there is none."""
    model = _load_4bit(odd_model_dir)
    with torch.no_grad():
        if cpu.bnb_packed_cpu_path():
            with pytest.raises(RuntimeError, match="is invalid for input of size"):
                model(torch.tensor([[1, 2, 3]]))
        else:
            assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_the_cpu_report_names_the_machine_and_both_libraries():
    lines = cpu.report()
    assert lines[0].startswith(f"cpu: {cpu.cpu_model()}")
    assert "AVX2 = 1" in lines[1]
    assert ("packed" in lines[2]) == cpu.bnb_packed_cpu_path()


def test_qlora_training_on_cpu_leaves_the_frozen_4bit_base_as_loaded(tiny_dir, tmp_path):
    """Eval during training, then a checkpoint: bitsandbytes' repack/unpack must not happen.

    On AVX-512-BF16 CPUs an eval forward repacks 4-bit layers and saving unpacks them,
    re-quantizing the block scales approximately: the base would drift under the adapter.
    """
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoTokenizer

    from helpers import sft
    from helpers.data import load_split

    model = _load_4bit(tiny_dir)
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    before = [(m.weight.data.clone(), m.weight.quant_state.absmax.clone()) for m in layers]
    rows = load_split("train")[:8]
    profile = dataclasses.replace(get_profile("tiny"), method="qlora", max_steps=2)
    trainer = sft.make_trainer(
        model,
        AutoTokenizer.from_pretrained(tiny_dir),
        rows,
        rows[:4],  # an eval loss during training: eval forwards
        profile,
        tmp_path,
        save_steps=1,  # a checkpoint after every step
        eval_steps=1,
        report_to=[],
    )
    sft.train(trainer)
    for layer, (weight, absmax) in zip(layers, before, strict=True):
        assert torch.equal(layer.weight.data, weight)
        assert torch.equal(layer.weight.quant_state.absmax, absmax)
