"""Fixtures shared by every test suite.

Random inputs: every test starts with Python's, NumPy's and torch's global generators
seeded (seed 0 unless ``--seeds`` says otherwise), so a test's random inputs are the same
on every run. ``--seeds 0-199`` (or ``0,5,9``) runs each selected test once per seed and
``--torch-threads N`` sets torch's intra-op threads: ``make test-repeat`` uses both to find
a test that holds for one input or one thread count only, before CI does (a comparison of
two computations that expects equal bits where only a tolerance holds).

S3: ``s3_server`` is one moto S3 server per test session, in a child process on a
free loopback port (see ``tests/support/s3server.py``); ``s3_env`` points the
storage layer at it through the environment and hands each test a fresh bucket.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from support.s3server import S3TestServer


def _parse_seeds(spec: str) -> list[int]:
    """``"0-199"`` -> 0..199, ``"0,5,9"`` -> [0, 5, 9]; ranges and lists mix."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, _, last = part.partition("-")
        try:
            seeds.extend(range(int(first), int(last or first) + 1))
        except ValueError:
            raise pytest.UsageError(f"--seeds {spec!r}: expected e.g. 0-199 or 0,5,9") from None
    if not seeds:
        raise pytest.UsageError(f"--seeds {spec!r} names no seed")
    return seeds


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cdul", "repeat tests under other random inputs and thread counts")
    group.addoption(
        "--seeds",
        default="0",
        help="seed(s) of the global RNGs each test starts with; several run each test once "
        "per seed (e.g. 0-199 or 0,5,9; default 0)",
    )
    group.addoption(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the whole session (default: torch's own)",
    )


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("--torch-threads")
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--torch-threads {threads}: must be >= 1")
        torch.set_num_threads(threads)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    seeds = _parse_seeds(metafunc.config.getoption("--seeds"))
    if len(seeds) > 1 and "_global_seed" in metafunc.fixturenames:
        metafunc.parametrize("_global_seed", seeds, indirect=True, ids=lambda s: f"seed{s}")


#: Per test (its id without the seed): whether its first seed drew from a global RNG.
_DRAWS_RANDOM: dict[str, bool] = {}


def _rng_states() -> tuple[object, ...]:
    numpy_state = np.random.get_state()
    return (random.getstate(), numpy_state[1].tobytes(), numpy_state[2],
            torch.random.get_rng_state().numpy().tobytes())  # fmt: skip


def _test_key(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    params = {} if callspec is None else dict(callspec.params)
    params.pop("_global_seed", None)
    return f"{item.nodeid.split('[')[0]}{sorted((k, repr(v)) for k, v in params.items())}"


@pytest.fixture(autouse=True)
def _global_seed(request: pytest.FixtureRequest) -> Iterator[int]:
    """Seeds Python's, NumPy's and torch's global RNGs before every test. Under several
    ``--seeds``, a test whose first seed drew no random number is not repeated: it would
    see the same inputs again."""
    seeds = _parse_seeds(request.config.getoption("--seeds"))
    seed = getattr(request, "param", seeds[0])
    key = _test_key(request.node)
    if seed != seeds[0] and _DRAWS_RANDOM.get(key) is False:
        pytest.skip("draws no random number from the global RNGs: its first seed covered it")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    before = _rng_states()
    yield seed
    _DRAWS_RANDOM[key] = _DRAWS_RANDOM.get(key, False) or _rng_states() != before


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
