"""``file://PATH``: objects are files under a directory.

Atomic writes: data goes to a temp file (``.tmp-*``) in the target's own directory,
is fsynced, then ``os.replace``-d over the target. ``os.replace`` is an atomic rename
within one file system, so a reader opens either the old file or the new one. A
writer killed mid-way leaves at most a ``.tmp-*`` file, which ``list()`` never shows.

Unlike S3, a key cannot be both an object and a "directory" here (``a`` and
``a/b``); writing one when the other exists raises StorageError.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Self

from cdul.core.errors import ConfigError, ObjectNotFoundError, StorageError
from cdul.core.storage.base import TEMP_PREFIX, ObjectStore, RetryPolicy, validate_key

_COPY_CHUNK = 1024 * 1024  # bytes per read/write when streaming files


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: without this a power cut can lose the new directory entry."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. platforms where directories cannot be opened; best effort
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc; elsewhere the
    classic set-and-restore, which is racy only against another thread doing the same)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(target: Path, fill: Callable[[BinaryIO], None]) -> None:
    """Create ``target`` atomically from whatever ``fill`` writes into a temp file.

    The file gets the mode any tool's new file gets (0666 less the umask), not the
    0600 of ``mkstemp``: another user (e.g. TorchServe reading a model store a job
    wrote) must be able to read it wherever the umask allows. On any failure
    (including ``fill`` raising half-way) the temp file is removed and ``target`` is
    untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


class LocalStore(ObjectStore):
    """Objects as files under ``root`` (an absolute directory path)."""

    scheme = "file"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        # abspath, not resolve(): keep the path the user gave (symlinks included).
        self._root = Path(os.path.abspath(root))
        if self._root.exists() and not self._root.is_dir():
            raise ConfigError(f"store root {self._root} exists and is not a directory")

    @classmethod
    def from_uri(
        cls, uri: str, *, retry: RetryPolicy | None = None, create_bucket: bool = False
    ) -> Self:
        """``file:///abs/dir`` or ``file://relative/dir``; ``retry`` and
        ``create_bucket`` do not apply (directories are created on first write)."""
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        if not path:
            raise ConfigError(f"store URI {uri!r} names no directory (use file:///abs/path)")
        return cls(path)

    @property
    def root(self) -> Path:
        return self._root

    @property
    def uri(self) -> str:
        return f"file://{self._root}"

    def uri_for(self, key: str) -> str:
        return f"file://{self._path(validate_key(key))}"

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*key.split("/"))

    def _write_error(self, key: str, exc: OSError) -> StorageError:
        return StorageError(f"cannot write {self.uri_for(key)}: {exc.strerror or exc}")

    # ---- primitives

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        try:
            atomic_write(self._path(key), lambda handle: handle.write(data))
        except OSError as exc:
            raise self._write_error(key, exc) from exc

    def _read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object at {self.uri_for(key)}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri_for(key)}: {exc}") from exc

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object at {self.uri_for(key)}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri_for(key)}: {exc}") from exc

    def _walk(self, start: Path) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(start):
            # Crashed writers' temp files are never objects; skip them (and any
            # directory so named) so a reader can't trip over one.
            dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_PREFIX)]
            rel_dir = Path(dirpath).relative_to(self._root).as_posix()
            for name in filenames:
                if not name.startswith(TEMP_PREFIX):
                    yield name if rel_dir == "." else f"{rel_dir}/{name}"

    def _list(self, prefix: str) -> list[str]:
        # Walk only below the prefix's directory part, then filter by string prefix
        # ("b" matches "b/c" and "bb", as in S3).
        directory = prefix.rpartition("/")[0]
        start = self._path(directory) if directory else self._root
        if not start.is_dir():
            return []
        try:
            return [key for key in self._walk(start) if key.startswith(prefix)]
        except OSError as exc:
            raise StorageError(f"cannot list {self.uri} (prefix {prefix!r}): {exc}") from exc

    def _delete(self, key: str) -> None:
        # Empty parent directories are left alone: pruning them would race with a
        # concurrent writer that has just created one.
        try:
            self._path(key).unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass
        except IsADirectoryError:
            raise StorageError(f"cannot delete {self.uri_for(key)}: it is a directory") from None
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri_for(key)}: {exc}") from exc

    def _write_file(self, key: str, local_path: Path) -> None:
        def copy(handle: BinaryIO) -> None:
            with local_path.open("rb") as source:
                shutil.copyfileobj(source, handle, _COPY_CHUNK)

        try:
            atomic_write(self._path(key), copy)
        except OSError as exc:
            raise self._write_error(key, exc) from exc

    def _read_file(self, key: str, local_path: Path) -> None:
        source_path = self._path(key)

        def copy(handle: BinaryIO) -> None:
            with source_path.open("rb") as source:
                shutil.copyfileobj(source, handle, _COPY_CHUNK)

        try:
            atomic_write(local_path, copy)
        except OSError as exc:
            if not source_path.is_file():
                raise ObjectNotFoundError(f"no object at {self.uri_for(key)}") from None
            raise StorageError(f"cannot copy {self.uri_for(key)} to {local_path}: {exc}") from exc

    def _child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix))
