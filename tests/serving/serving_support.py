"""Helpers of the serving tests: the test model's data, an HTTP client, test images.

A module of its own (not conftest.py) so test files import it by a name no other test
directory uses.
"""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cdul.core.images import decode_image
from cdul.core.transforms import eval_transform
from cdul.serving.config import ClassifierConfig

REPO = Path(__file__).resolve().parents[2]
TEST_CONFIG = REPO / "deploy" / "torchserve" / "config.test.properties"
CLASSES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "heart",
    "crescent",
    "arrow",
    "diamond",
    "hexagon",
    "semicircle",
)
#: Small, so an "oversized image" test needs only a 1200x1000 picture.
MAX_PIXELS = 1_000_000
MODEL_NAME = "cdul"


@dataclass
class ServedModel:
    """The archived model and everything needed to compute its answers in-process."""

    config: ClassifierConfig
    model: torch.nn.Module
    weights: Path
    archive: Path

    def expected(self, image_bytes: bytes) -> list[float]:
        """Probabilities by direct forward: the project's decoder, eval transform, model."""
        return self.expected_many([image_bytes])[0]

    def expected_many(self, images: list[bytes]) -> list[list[float]]:
        """:meth:`expected` for several images in one forward (batching changes the
        result by far less than the 1e-5 the tests allow)."""
        transform = eval_transform(self.config.image_size, self.config.mean, self.config.std)
        batch = torch.stack(
            [transform(decode_image(data, max_pixels=self.config.max_pixels)) for data in images]
        )
        with torch.inference_mode():
            return torch.sigmoid(self.model(batch)).tolist()


@dataclass
class Response:
    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A minimal HTTP client on the standard library (one connection per call)."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.headers = dict(headers or {})

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers={**self.headers, **(headers or {})})
            answer = connection.getresponse()
            return Response(
                answer.status,
                answer.reason,
                {k.lower(): v for k, v in answer.getheaders()},
                answer.read(),
            )
        finally:
            connection.close()

    def predict(
        self,
        image: bytes,
        content_type: str = "application/octet-stream",
        path: str = f"/predictions/{MODEL_NAME}",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        return self.request("POST", path, image, {"Content-Type": content_type, **(headers or {})})


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def random_image(seed: int, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Smooth random colours (blocky noise upscaled), so JPEG artefacts stay realistic."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    small = rng.integers(0, 256, size=(8, 8, channels), dtype=np.uint8)
    image = Image.fromarray(small[..., 0] if channels == 1 else small, mode)
    return image.resize(size, Image.Resampling.BILINEAR)
