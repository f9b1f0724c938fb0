"""Shared fixtures: the tiny model is built once per test session into a temporary cache."""

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Checkpoint directory of the tiny model, built from the course data."""
    from helpers.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a shared 2-core runner, 2 OpenMP threads run ~15x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
