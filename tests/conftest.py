"""Fixtures shared by every test suite.

S3: ``s3_server`` is one moto S3 server per test session, in a child process on a
free loopback port (see ``tests/support/s3server.py``); ``s3_env`` points the
storage layer at it through the environment and hands each test a fresh bucket.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from support.s3server import S3TestServer


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    """A running S3 test server (moto), torn down at the end of the session."""
    with S3TestServer(host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Set ``S3_*`` for the test server, create a fresh bucket, yield ``s3://BUCKET/run``.

    The listener is brought back after the test even if it stopped it and failed.
    """
    if not s3_server.listening:
        s3_server.resume_listening()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = f"cdul-test-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    yield f"s3://{bucket}/run"
    s3_server.inject_slowdown(0)
    if not s3_server.listening:
        s3_server.resume_listening()


# -- the embedded world ------------------------------------------------------------------


@pytest.fixture(scope="session")
def world_clip():
    """The world's tiny CLIP checkpoint, trained once and cached under $CDUL_CACHE_DIR
    (the Makefile points it at the checkout's .cache/, so CI trains at most once)."""
    from cdul.world.tiny_clip import TinyClipRecipe, ensure_tiny_clip

    return ensure_tiny_clip(TinyClipRecipe(), progress=False)


@pytest.fixture(scope="session")
def world_backbone():
    """The world's backbone state_dict (torchvision resnet18), cached like the CLIP."""
    from cdul.world.backbone import BackboneRecipe, ensure_backbone

    return ensure_backbone(BackboneRecipe(), progress=False)


@pytest.fixture(scope="session")
def world_models(world_clip, world_backbone):
    return {"clip": world_clip, "backbone": world_backbone}


@pytest.fixture(scope="session")
def world_root(tmp_path_factory):
    """A world in VOC layout: 300 train and 500 val scenes (seed 0)."""
    from cdul.world.generator import write_voc_world

    return write_voc_world(
        tmp_path_factory.mktemp("world"), seed=0, train=300, val=500, progress=False
    )
