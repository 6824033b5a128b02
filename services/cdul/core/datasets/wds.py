"""``wds:PATTERN``: WebDataset tar shards, read as streams; the shard is the unit of work.

Internet-scale image sets ship as tar shards (img2dataset, LAION, DataComp: ~10,000
samples each, ``{00000..99999}.tar``): one GET per 10,000 images instead of one per
image, and a listing of thousands of keys instead of billions. ``PATTERN`` is a local
path or an ``s3://`` URL with brace expansion as WebDataset writes it
(``wds:s3://bucket/shards/{00000..00999}.tar``, ``{a,b}`` lists too).

A sample is the run of consecutive tar members that share a key: the member's path up
to the first ``.`` of its file name (``images/000123.jpg`` and ``images/000123.json``
are sample ``images/000123``). Its image is the first member with an image extension
(:data:`~cdul.core.images.IMAGE_EXTENSIONS`); optional ground truth comes from a
``.json`` member (``{"labels": [names or indices]}``) or a ``.cls`` member (one class
index or name per line), against the classes the run is given. The key is the image id.

Read with Python's ``tarfile`` in streaming mode (``r|*``: front to back, plain or
compressed, nothing written to disk). The ``webdataset`` package reads the same format,
but it would be a dependency for one loop, needs ``pipe:`` commands or presigned URLs
for S3, and its error handlers are less precise about which member broke; the object
store's stream (:meth:`~cdul.core.storage.ObjectStore.open_read`) keeps our credentials,
retries and request counts. A member whose image is missing or a label file that does
not parse, and a truncated or corrupt tar, are named (shard and member) and, with
``skip_bad``, skipped like a corrupt file; the rest of a truncated shard is unknown
and reported as such.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cdul.core.errors import ConfigError, DatasetError, StorageError
from cdul.core.images import IMAGE_EXTENSIONS
from cdul.core.storage import ObjectStore, open_store

FORM = "wds:PATH|s3://BUCKET/KEY (WebDataset tar shards; brace ranges {00000..00099})"
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_IMAGE_SUFFIXES = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def expand_braces(pattern: str) -> list[str]:
    """``a{00..02}b{x,y}`` -> the product, in order; numeric ranges keep zero padding."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    if m := _RANGE.match(body):
        first, last = int(m.group(1)), int(m.group(2))
        if last < first:
            raise ConfigError(f"brace range {{{body}}} in {pattern!r} counts down")
        width = len(m.group(1)) if m.group(1).startswith("0") else 0
        options = [str(n).zfill(width) for n in range(first, last + 1)]
    elif "," in body:
        options = body.split(",")
    else:
        raise ConfigError(f"{{{body}}} in {pattern!r} is neither a range (0..9) nor a list (a,b)")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [out for option in options for out in expand_braces(head + option + tail)]


@dataclass(frozen=True)
class WdsSample:
    """One sample of a shard: its key, its image bytes (None when it has none, with
    ``problem`` saying why) and the class names of its label file (None: no file)."""

    key: str
    data: bytes | None
    labels: list[str] | None = None
    problem: str | None = None


def split_name(name: str) -> tuple[str, str]:
    """A member path -> (sample key, suffix): the key ends at the file name's first dot."""
    directory, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), suffix.lower() if dot else ""


class TarShards:
    """The shards a ``wds:`` spec names, each read as a stream of samples."""

    def __init__(self, spec: str, *, classes: Sequence[str] = (), skip_bad: bool = False) -> None:
        if not spec.startswith("wds:") or not spec[4:].strip():
            raise ConfigError(f"bad dataset spec {spec!r}: expected {FORM}")
        if isinstance(classes, str):
            raise ConfigError(f"classes must be a sequence of names, got the string {classes!r}")
        self._spec, self.classes, self.skip_bad = spec.strip(), tuple(classes), skip_bad
        pattern = self._spec[4:]
        self.urls = expand_braces(pattern)
        if len(set(self.urls)) != len(self.urls):
            raise ConfigError(f"{spec} names a shard twice")
        self._stores: dict[str, ObjectStore] = {}
        self._check_present()

    @property
    def spec(self) -> str:
        return self._spec

    def __len__(self) -> int:
        return len(self.urls)

    def _where(self, url: str) -> tuple[ObjectStore, str]:
        """The store of the shard's directory (opened once per directory) and its key."""
        if url.startswith("s3://"):
            parent, _, key = url.rpartition("/")
            if parent == "s3:/" or not key:
                raise ConfigError(f"{url!r} is not s3://BUCKET/KEY")
        else:
            path = Path(url).expanduser()
            parent, key = str(path.parent.resolve()), path.name
        if parent not in self._stores:
            self._stores[parent] = open_store(parent)
        return self._stores[parent], key

    def _check_present(self) -> None:
        """Every shard exists: one listing per directory, the missing ones named."""
        wanted: dict[ObjectStore, list[str]] = {}
        for url in self.urls:
            store, key = self._where(url)
            wanted.setdefault(store, []).append(key)
        for store, keys in wanted.items():
            held = set(store.list())
            missing = [k for k in keys if k not in held]
            if missing:
                raise ConfigError(f"{self._spec}: {len(missing)} shard(s) missing under "
                                  f"{store.uri}: {', '.join(missing[:5])}")  # fmt: skip

    def stores(self) -> list[ObjectStore]:
        return list(self._stores.values())

    def samples(self, k: int) -> Iterator[WdsSample]:
        """Shard ``k``'s samples in tar order, streamed. A sample without an image or
        with a bad label file has ``problem`` set; a truncated or corrupt tar raises
        DatasetError naming the shard and the last good sample."""
        url = self.urls[k]
        store, key = self._where(url)
        last = None
        try:
            with (
                store.open_read(key) as raw,
                _Counted(raw) as stream,
                tarfile.open(fileobj=stream, mode="r|*") as tar,
            ):
                current, files = None, []
                for member in tar:  # reads the next header: a sample is complete when the
                    if not member.isfile():  # next key's first header has been read
                        continue
                    member_key = split_name(member.name)[0]
                    if files and member_key != current:
                        last = current
                        yield self._sample(url, current, files)
                        files = []
                    current = member_key
                    files.append((member.name, tar.extractfile(member).read()))  # type: ignore[union-attr]
                _check_end(tar, stream)  # before the last sample: it may be cut short
                if files:
                    last = current
                    yield self._sample(url, current, files)
        except (tarfile.TarError, EOFError, OSError, StorageError) as error:
            after = f"after sample {last!r}" if last else "before its first sample"
            raise DatasetError(f"{url}: unreadable tar shard {after}: {error}") from None

    def _sample(self, url: str, key: str, files: list[tuple[str, bytes]]) -> WdsSample:
        by_suffix = {split_name(name)[1]: data for name, data in files}
        image = next((by_suffix[s] for s in by_suffix if s.rsplit(".", 1)[-1] in _IMAGE_SUFFIXES),
                     None)  # fmt: skip
        if image is None:
            return WdsSample(key, None, problem=f"{url}#{key}: no image member "
                             f"(has {', '.join(sorted(by_suffix)) or 'nothing'})")  # fmt: skip
        try:
            labels = self._labels(by_suffix)
        except (ValueError, UnicodeDecodeError, DatasetError) as error:
            return WdsSample(key, None, problem=f"{url}#{key}: bad label file: {error}")
        return WdsSample(key, image, labels)

    def _labels(self, by_suffix: dict[str, bytes]) -> list[str] | None:
        if "json" in by_suffix:
            data = json.loads(by_suffix["json"].decode("utf-8"))
            values = data.get("labels") if isinstance(data, dict) else None
            if values is None:
                return None  # metadata without labels (LAION's .json): unlabeled
            if not isinstance(values, list):
                raise ValueError(f'"labels" is {type(values).__name__}, expected a list')
        elif "cls" in by_suffix:
            values = by_suffix["cls"].decode("utf-8").split()
        else:
            return None
        return [self._class_name(v) for v in values]

    def _class_name(self, value: object) -> str:
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(self.classes):
                raise DatasetError(f"class index {index} outside 0..{len(self.classes) - 1}")
            return self.classes[index]
        if text not in self.classes:
            raise DatasetError(f"class {text!r} is not one of the run's classes")
        return text


class _Counted(io.RawIOBase):
    """A stream that counts the bytes read through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream, self.total = stream, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        self.total += len(data)
        return len(data)


def _check_end(tar: tarfile.TarFile, stream: _Counted) -> None:
    """tarfile ends quietly at a cut-off header; a whole tar ends with a zero block.
    (Compressed tars are checked by their decompressor.)"""
    if getattr(tar.fileobj, "comptype", "tar") != "tar":
        return
    while stream.read(1 << 16):
        pass
    if stream.total < tar.offset + tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"truncated: no end-of-archive block after byte {tar.offset}")
