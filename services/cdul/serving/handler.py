"""TorchServe handler for the CDUL multi-label classifier.

This file is copied into every model archive and imported by TorchServe's Python
worker as a top-level module, so two TorchServe rules shape it:

* it defines **exactly one class** (TorchServe instantiates the only class whose
  ``__module__`` is this module; helper classes live in :mod:`cdul.serving.protocol`
  and :mod:`cdul.serving.config`);
* it has **no module-level function named** ``handle``: TorchServe would take that
  function as the entry point instead of the class.

It imports the ``cdul`` package, which must be installed in the interpreter the
workers run (TorchServe starts them with the Python that launched ``torchserve``, or
the ``python=`` setting of ``config.properties``).

The base handler is not used: it unpickles models with plain ``torch.load`` and needs
packages (captum) this model does not; the state_dict is loaded here with
``weights_only=True`` instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from cdul.core.images import ImageDecodeError, decode_image
from cdul.core.transforms import eval_transform
from cdul.serving.config import CONFIG_FILE_NAME, ClassifierConfig, load_classifier
from cdul.serving.protocol import (
    RequestError,
    error_body,
    extract_image,
    prediction_body,
    resolve_threshold,
    status_phrase,
)

logger = logging.getLogger(__name__)

#: Response header carrying the size of the batch a request was answered in.
BATCH_SIZE_HEADER = "X-Batch-Size"


class MultiLabelHandler:
    """Decode, preprocess (the trainer's eval transform), one batched forward, sigmoid.

    Each request of a batch is validated on its own: a request that cannot be decoded,
    or carries a bad threshold, gets its own 4xx with a JSON message while the others
    are answered. Only a failure of the model itself fails the whole batch (TorchServe
    then answers 503 to every request in it).
    """

    def __init__(self) -> None:
        self.initialized = False
        self.config: ClassifierConfig | None = None
        self.model: torch.nn.Module | None = None
        self.device = torch.device("cpu")
        self.transform: Any = None
        self.thresholds: list[float] = []  # per class, the archive's

    def initialize(self, context: Any) -> None:
        """Load the config and state_dict from the extracted archive."""
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.config = ClassifierConfig.read(model_dir / CONFIG_FILE_NAME)
        serialized = context.manifest["model"].get("serializedFile")
        if not serialized:
            raise ValueError("the model archive has no serialized file (the state_dict)")
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.device = torch.device(f"cuda:{gpu_id}")
        self.model = load_classifier(model_dir / serialized, self.config, self.device)
        self.transform = eval_transform(self.config.image_size, self.config.mean, self.config.std)
        self.thresholds = self.config.decision_thresholds()
        self.initialized = True
        logger.info(
            "cdul classifier %s: %d classes, %d px, thresholds %s, on %s (pid %d)",
            self.config.arch,
            len(self.config.classes),
            self.config.image_size,
            self.config.thresholds_from or f"{self.config.threshold:.3f} for every class",
            self.device,
            os.getpid(),
        )

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        """Answer one batch: a JSON string per request, in order."""
        assert self.config is not None and self.model is not None, "initialize() first"
        answers: list[str | None] = [None] * len(data)
        tensors: list[torch.Tensor] = []
        accepted: list[tuple[int, list[float]]] = []  # (position in batch, thresholds)
        for idx, request in enumerate(data):
            # How many requests TorchServe batched together: lets clients (and the
            # tests) see that batching happens and that one bad item spared the rest.
            context.set_response_header(idx, BATCH_SIZE_HEADER, str(len(data)))
            try:
                tensor, thresholds = self._prepare(idx, request or {}, context)
            except (RequestError, ImageDecodeError) as error:
                status = error.status if isinstance(error, RequestError) else 400
                answers[idx] = self._refuse(context, idx, status, str(error))
                continue
            tensors.append(tensor)
            accepted.append((idx, thresholds))
            context.set_response_content_type(idx, "application/json")

        if tensors:
            batch = torch.stack(tensors).to(self.device)
            with torch.inference_mode():
                probabilities = torch.sigmoid(self.model(batch)).float().cpu().tolist()
            for (idx, thresholds), row in zip(accepted, probabilities, strict=True):
                answers[idx] = prediction_body(row, self.config.classes, thresholds)
        return [answer if answer is not None else "" for answer in answers]

    def _prepare(
        self, idx: int, request: dict[str, Any], context: Any
    ) -> tuple[torch.Tensor, list[float]]:
        """Preprocessed tensor and per-class thresholds of one request, or
        RequestError/ImageDecodeError."""
        assert self.config is not None
        headers = context.get_all_request_header(idx)
        override = resolve_threshold(request, headers)
        thresholds = self.thresholds if override is None else [override] * len(self.thresholds)
        field, payload = extract_image(request)
        image = decode_image(
            payload,
            name=f"{field} of request {context.get_request_id(idx)}",
            max_pixels=self.config.max_pixels,
        )
        return self.transform(image), thresholds

    @staticmethod
    def _refuse(context: Any, idx: int, status: int, message: str) -> str:
        """Give request ``idx`` its own error status; the batch carries on."""
        logger.info("refused request %s: %d %s", context.get_request_id(idx), status, message)
        context.set_response_status(status, status_phrase(message), idx=idx)
        context.set_response_content_type(idx, "application/json")
        return error_body(status, message)
