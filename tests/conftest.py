"""Shared fixtures: the tiny model is built once per test session into a temporary cache."""

import socket

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Checkpoint directory of the tiny model, built from the course data."""
    from helpers.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_export(tiny_dir, tmp_path_factory):
    """The tiny model's whole export chain: a random LoRA adapter, merged (float32), GGUF files.

    The adapter is initialised at random (``init_lora_weights=False``) so that it really
    changes the outputs; GGUF files: ``f32`` (exact), ``q8_0`` and ``q4_k_m``.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.quantize import convert_to_gguf, merge_adapter, quantize_gguf

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(root / "adapter")
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(root / "adapter")
    report = merge_adapter(tiny_dir, root / "adapter", root / "merged", save_dtype="float32")
    gguf = {"f32": convert_to_gguf(root / "merged", root / "gguf" / "model-f32.gguf", "f32")}
    for kind in ("q8_0", "q4_k_m"):
        gguf[kind] = quantize_gguf(gguf["f32"], root / "gguf" / f"model-{kind}.gguf", kind)
    return {
        "base": tiny_dir,
        "adapter": root / "adapter",
        "merged": root / "merged",
        "gguf": gguf,
        "merge_report": report,
    }


@pytest.fixture(scope="session")
def tiny_gguf(tiny_export):
    """A small GGUF chat model (the tiny model + random adapter, q8_0) for server/UI tests."""
    return tiny_export["gguf"]["q8_0"]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a shared 2-core runner, 2 OpenMP threads run ~15x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch):
    """Any real network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a real network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
