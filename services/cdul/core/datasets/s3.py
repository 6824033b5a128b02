"""``s3://BUCKET/PREFIX``: every image object under a prefix, without labels.

The object-store twin of :class:`~cdul.core.datasets.folder.FolderDataset`: ids are the
keys relative to the prefix (sorted), images are read from the store
(:meth:`read_bytes`), and ``classes`` names the label set to pseudo-label them with.
The store's endpoint and keys come from the environment (``S3_ENDPOINT``,
``S3_ACCESS_KEY``, ``S3_SECRET_KEY``), as for every ``s3://`` URI.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdul.core.datasets.base import UnlabeledDataset
from cdul.core.errors import DatasetError, StorageError
from cdul.core.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from cdul.core.storage import open_store


class S3Dataset(UnlabeledDataset):
    """Image objects under ``uri`` (``s3://BUCKET/PREFIX``), without labels."""

    def __init__(
        self,
        uri: str,
        *,
        classes: Sequence[str] = (),
        skip_bad: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(classes=classes, skip_bad=skip_bad, max_pixels=max_pixels)
        self.uri = uri
        self.store = open_store(uri)
        keys = sorted(k for k in self.store.list() if k.lower().endswith(IMAGE_EXTENSIONS))
        if not keys:
            raise DatasetError(
                f"{uri} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}, any case)"
            )
        self._keys = keys
        self._set_images(keys, [self.store.uri_for(k) for k in keys])

    @property
    def spec(self) -> str:
        return self.uri

    def read_bytes(self, i: int) -> bytes:
        try:
            return self.store.read_bytes(self._keys[self._index(i)])
        except StorageError as error:
            raise DatasetError(f"{self.image_path(i)}: cannot read image: {error}") from None
