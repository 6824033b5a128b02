"""Fixtures of the tools that read runs: a store for hand-written shards, a small merged
run with hand-chosen scores (tests/support/labels_run.py)."""

from __future__ import annotations

import pytest
from support.labels_run import make_run

from cdul.core.storage import open_store


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path}/run")


@pytest.fixture
def run(tmp_path) -> dict:
    """A merged one-shard run of three folder images with hand-chosen scores."""
    return make_run(tmp_path)
