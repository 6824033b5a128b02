"""Hand-made tar shards for the ``wds:`` tests: members in order, optionally cut short."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def write_tar(path: Path, members: list[tuple[str, bytes]], cut: int | None = None) -> Path:
    """A tar of ``members`` (name, bytes) at ``path``, its first ``cut`` bytes only if
    given (each member: a 512-byte header, then its data padded to 512)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    path.write_bytes(data[:cut] if cut else data)
    return path
