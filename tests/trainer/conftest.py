"""Trainer fixtures: the world's pseudo labels (tests/support/world_labels.py) computed
once per session and written into a fresh run per test."""

from __future__ import annotations

import pytest
from support.world_labels import WorldLabels, compute_world_labels, write_labels


@pytest.fixture(scope="session")
def world_labels(world_root, world_clip) -> WorldLabels:
    return compute_world_labels(world_root, world_clip)


@pytest.fixture
def labels_run(world_labels, tmp_path) -> str:
    """A fresh file:// run holding the world's pseudo labels."""
    return write_labels(world_labels, f"file://{tmp_path / 'run'}")
