"""Shared fixtures: the tiny model is built once per test session into a temporary cache."""

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Checkpoint directory of the tiny model, built from the course data."""
    from helpers.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("cache"))
