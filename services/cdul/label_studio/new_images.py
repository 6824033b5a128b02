"""Images a run does not hold, scored through the CLIP service as the run was labeled.

The run's manifest says how it was labeled: the classes and prompts, the snippet spec,
the recipe (aggregation, zeta, global weight; a debiased run's stored class bias) and the
CLIP model. A new image gets the same five vectors from one ``SnippetSimilarity`` call
to a service that must serve that model. Recipes that need every snippet's scores (not
alpha and beta alone) are refused at start: the backend asks for none.

A task's image is fetched by its URL: ``s3://`` and ``file://`` through the project's
stores; a local path; Label Studio's local-files URL (``/data/local-files/?d=REL``) from
``--image-root``; other ``/data/...`` URLs from ``--label-studio-url`` with the API key
``$LABEL_STUDIO_API_KEY``; ``http(s)://`` URLs as given.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import torch

from cdul.clip_service.client import SimilarityClient, SimilarityServiceError, label_set_ref
from cdul.core.errors import ConfigError
from cdul.core.method.recipes import LabelRecipe, debias
from cdul.core.pseudo_labels import PseudoLabels
from cdul.core.storage import open_location

#: The largest image the backend fetches.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
LOCAL_FILES = "/data/local-files/"


class ImageFetcher:
    def __init__(self, image_root: str | None, label_studio_url: str | None) -> None:
        self.image_root = Path(image_root).resolve() if image_root else None
        self.label_studio_url = label_studio_url.rstrip("/") if label_studio_url else None
        self.api_key = os.environ.get("LABEL_STUDIO_API_KEY")

    def fetch(self, url: str) -> bytes:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme in ("s3", "file"):
            store, key = open_location(url)
            return store.read_bytes(key)
        if parsed.path.startswith(LOCAL_FILES) and self.image_root is not None:
            relative = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
            path = (self.image_root / relative).resolve()
            if not path.is_relative_to(self.image_root) or not path.is_file():
                raise ConfigError(f"{url}: no such image under --image-root {self.image_root}")
            return path.read_bytes()
        if not parsed.scheme and url.startswith("/") and not url.startswith("/data/"):
            return Path(url).read_bytes()
        headers = {}
        if not parsed.scheme:
            if self.label_studio_url is None:
                raise ConfigError(f"{url} is a Label Studio URL: start the backend with "
                                  "--label-studio-url (and $LABEL_STUDIO_API_KEY)")  # fmt: skip
            url = self.label_studio_url + url
        if self.label_studio_url and url.startswith(self.label_studio_url) and self.api_key:
            headers["Authorization"] = f"Token {self.api_key}"
        if urllib.parse.urlparse(url).scheme not in ("http", "https"):
            raise ConfigError(f"cannot fetch image {url!r}: not s3://, file://, http(s) or a path")
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                data = response.read(MAX_IMAGE_BYTES + 1)
        except (urllib.error.URLError, OSError) as error:
            raise ConfigError(f"cannot fetch image {url}: {error}") from None
        if len(data) > MAX_IMAGE_BYTES:
            raise ConfigError(f"image {url} is larger than {MAX_IMAGE_BYTES} bytes")
        return data


class NewImages:
    """Score images the run does not hold, the way the run was labeled."""

    def __init__(self, endpoints: list[str], labels: PseudoLabels, fetcher: ImageFetcher) -> None:
        m = labels.manifest
        self.recipe = LabelRecipe(**{**(m.recipe or {}), "zeta": m.zeta})
        if self.recipe.needs_snippets:
            raise ConfigError(
                f"the run's recipe {self.recipe} needs every snippet's scores; the backend scores "
                "new images from alpha and beta only: run it without --endpoint"
            )
        self.client = SimilarityClient(endpoints)
        self.manifest = m
        self.label_set = label_set_ref(m.classes, m.template, m.templates or ())
        self.bias = None if m.class_bias is None else torch.tensor(m.class_bias)
        self.fetcher = fetcher
        self.checked = False

    def _check_model(self) -> None:
        info = self.client.model_info()
        m = self.manifest
        if (info.model_name, info.pretrained) != (m.clip_model, m.clip_pretrained):
            raise ConfigError(
                f"the CLIP service serves {info.model_name} ({info.pretrained}); the run was "
                f"labeled with {m.clip_model} ({m.clip_pretrained})"
            )
        self.checked = True

    def vectors(self, image_id: str, url: str) -> dict[str, torch.Tensor]:
        """The five ``(1, C)`` vectors of one image."""
        data = self.fetcher.fetch(url)
        try:
            if not self.checked:
                self._check_model()
            answer = self.client.snippet_similarity(
                image_id, data, self.label_set, self.manifest.snippet_spec, zeta=self.recipe.zeta
            )
        except SimilarityServiceError as error:
            raise ConfigError(f"the CLIP service could not score {url}: {error}") from None
        glob = torch.tensor([list(getattr(answer, "global").probability)])
        alpha, beta = torch.tensor([list(answer.alpha)]), torch.tensor([list(answer.beta)])
        vectors = {"global": glob, "alpha": alpha, "beta": beta,
                   **self.recipe.apply(glob, alpha, beta)}  # fmt: skip
        if self.bias is not None:
            vectors["final"] = debias(vectors["final"], self.bias)
        return vectors

    def close(self) -> None:
        self.client.close()
