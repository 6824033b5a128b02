"""A folder of unlabeled images: what a user of the service actually has.

Every file under the folder (recursively) whose extension is one of
:data:`~cdul.core.images.IMAGE_EXTENSIONS`, in any case (``.JPG``, ``.Png``), is an
item; other files are ignored. Names starting with ``.`` (files or directories) are
ignored too: they are hidden tool state such as ``.ipynb_checkpoints`` or macOS's
``._photo.jpg`` resource forks, which carry an image extension but no image.
Directory symlinks are not followed, so a link loop cannot make the walk endless.

Items are sorted by their POSIX path relative to the folder, which is also their
image id (``"beach/IMG_0001.JPG"``): stable across machines, so shards and pseudo
labels keyed by id line up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cdul.core.datasets.base import UnlabeledDataset
from cdul.core.errors import ConfigError, DatasetError
from cdul.core.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS

__all__ = ["FolderDataset"]


class FolderDataset(UnlabeledDataset):
    """Images under ``root``, recursively, without labels."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        classes: Sequence[str] = (),
        skip_bad: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(classes=classes, skip_bad=skip_bad, max_pixels=max_pixels)
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"image folder {str(self.root)!r} is not a directory")
        relative = sorted(_image_files(self.root))
        if not relative:
            raise DatasetError(
                f"image folder {str(self.root)!r} holds no images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)}, any case, recursively)"
            )
        self._set_images(relative, [self.root.joinpath(*r.split("/")) for r in relative])

    @property
    def spec(self) -> str:
        return f"folder:{self.root}"


def _image_files(root: Path) -> list[str]:
    """POSIX paths, relative to ``root``, of the image files below it."""
    found: list[str] = []
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        base = Path(directory).relative_to(root)
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            found.append((base / name).as_posix())
    return found
