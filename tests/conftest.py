"""Shared fixtures: the tiny model is built once per test session into a temporary cache."""

import socket

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


@pytest.fixture
def no_network(monkeypatch):
    """Any real network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a real network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


class RecordingProbe:
    """A probe_url stand-in: answers True only for ``reachable`` URLs, records every call."""

    def __init__(self, *reachable: str):
        self.reachable = set(reachable)
        self.urls: list[str] = []

    def __call__(self, url: str) -> bool:
        self.urls.append(url)
        return url in self.reachable
