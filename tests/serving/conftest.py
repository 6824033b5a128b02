"""Serving fixtures: a small archived model and ONE real TorchServe for the session.

The model is a randomly initialised ResNet-18 (fixed seed) with the world's 12
classes at 64 px, archived by the project's own archive builder. TorchServe (Java 17)
starts once per session through :class:`cdul.serving.local.LocalTorchServe`, with
``deploy/torchserve/config.test.properties`` (token authorization ON) on free
loopback ports, in its own working directory (key file, logs, pid file, worker
sockets). Teardown stops it whatever the tests did, then checks that no process of
its group is left and that its ports are closed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from serving_support import CLASSES, MAX_PIXELS, MODEL_NAME, TEST_CONFIG, Client, ServedModel

from cdul.core.classifier import build_classifier
from cdul.serving.archive import build_archive
from cdul.serving.config import ClassifierConfig, load_classifier
from cdul.serving.local import LocalTorchServe


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    """ResNet-18, seed 0, 12 classes, 64 px, max 1 MP, archived as ``cdul.mar``; each
    class with its own threshold around the untrained network's 0.5 (the last: never)."""
    root = tmp_path_factory.mktemp("serving-model")
    thresholds = (*(0.47 + 0.006 * k for k in range(len(CLASSES) - 1)), None)
    config = ClassifierConfig(
        arch="resnet18", classes=CLASSES, image_size=64, threshold=0.5, max_pixels=MAX_PIXELS,
        thresholds=thresholds, thresholds_from="test: by hand",
    )  # fmt: skip
    weights = root / "classifier.pt"
    with torch.random.fork_rng():  # seeded weights without touching other tests' RNG
        torch.manual_seed(0)
        torch.save(build_classifier(config.arch, len(CLASSES)).state_dict(), weights)
    archive = build_archive(weights, config, root / "model-store", model_name=MODEL_NAME)
    return ServedModel(config, load_classifier(weights, config), weights, archive)


@pytest.fixture(scope="session")
def torchserve(
    served_model: ServedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalTorchServe]:
    """One TorchServe for the whole session, stopped even when tests fail."""
    server = LocalTorchServe(
        served_model.archive.parent,
        {MODEL_NAME: served_model.archive.name},
        tmp_path_factory.mktemp("torchserve"),
        base_config=TEST_CONFIG,
        # One intra-op thread in the single worker: on a 2-core machine shared with the
        # test process (and other jobs), two OpenMP threads wait on each other's busy
        # core and a batch takes ten times longer.
        env={"OMP_NUM_THREADS": "1"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        # stop() never raises; check here that it really left nothing behind.
        assert not server.running(), "TorchServe processes or ports survived stop()"


@pytest.fixture(scope="session")
def client(torchserve: LocalTorchServe) -> Client:
    """Inference API client carrying the inference key."""
    return Client(torchserve.inference_url, torchserve.auth_headers("inference"))
