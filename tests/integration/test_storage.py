"""The storage layer (cdul.core.storage) on file:// and on a real S3 server (moto).

The first part is one suite run against both backends; then come the behaviours
only one backend has: file:// atomicity under crashes, S3 configuration, outages,
throttling and multipart uploads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from support.s3server import S3TestServer

from cdul.core.errors import (
    ConfigError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
)
from cdul.core.storage import (
    LocalStore,
    ObjectStore,
    RetryPolicy,
    S3Settings,
    S3Store,
    open_store,
)
from cdul.core.storage.s3 import is_retryable

# Quick to give up, so that a test that goes wrong fails in seconds, not minutes.
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)
# Patient enough to outlast a 2 s outage (waits 0.25 + 0.5 + 1 + 2 s ...).
OUTAGE_RETRY = RetryPolicy(attempts=8, initial_backoff_s=0.25, max_backoff_s=2.0)
S3_LOGGER = "cdul.core.storage.s3"
LARGE_SIZE = 12 * 1024 * 1024 + 12345  # > 8 MiB part size: a 2-part multipart upload


def _make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if kind == "file":
        return open_store(f"file://{tmp_path / 'store'}")
    return open_store(request.getfixturevalue("s3_env"), retry=FAST_RETRY)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A fresh, empty store on each backend."""
    return _make_store(request.param, request, tmp_path)


@pytest.fixture
def s3_store(s3_env: str) -> S3Store:
    store = open_store(s3_env, retry=FAST_RETRY)
    assert isinstance(store, S3Store)
    return store


@pytest.fixture
def large_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("large") / "checkpoint.pt"
    with path.open("wb") as handle:
        handle.write(os.urandom(LARGE_SIZE))
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------- both backends


def test_bytes_round_trip_binary_and_empty(store: ObjectStore) -> None:
    every_byte = bytes(range(256)) * 17
    store.write_bytes("blob.bin", every_byte)
    store.write_bytes("empty", b"")
    store.write_bytes("view", memoryview(b"abc"))
    assert store.read_bytes("blob.bin") == every_byte
    assert store.read_bytes("empty") == b""
    assert store.read_bytes("view") == b"abc"


def test_overwrite_replaces_the_object(store: ObjectStore) -> None:
    store.write_bytes("a/x", b"first version, longer")
    store.write_bytes("a/x", b"second")
    assert store.read_bytes("a/x") == b"second"
    assert store.list() == ["a/x"]


def test_text_and_json_helpers(store: ObjectStore) -> None:
    store.write_text("notes.txt", "zeta = 0.5 · σ = 1\n")
    assert store.read_text("notes.txt") == "zeta = 0.5 · σ = 1\n"
    manifest = {"zeta": 0.5, "classes": ["aeroplane", "bicycle"], "clip": "RN50", "é": [1, 2]}
    store.write_json("manifest.json", manifest)
    assert store.read_json("manifest.json") == manifest
    raw = store.read_bytes("manifest.json")
    # Sorted, indented, UTF-8 (not \u escapes): the same content gives the same bytes.
    assert raw.decode("utf-8").startswith('{\n  "classes": [\n')
    assert "é".encode() in raw
    assert raw.index(b'"clip"') < raw.index(b'"zeta"') < raw.index("é".encode())


def test_read_text_and_json_reject_garbage(store: ObjectStore) -> None:
    store.write_bytes("bad.txt", b"\xff\xfe\x00")
    store.write_bytes("bad.json", b"{not json")
    with pytest.raises(StorageError, match="not UTF-8"):
        store.read_text("bad.txt")
    with pytest.raises(StorageError, match=r"bad\.json is not valid JSON"):
        store.read_json("bad.json")


def test_large_file_streams_round_trip(
    store: ObjectStore, large_file: Path, tmp_path: Path
) -> None:
    store.write_file("training/checkpoints/epoch-001.pt", large_file)
    out = tmp_path / "download" / "nested" / "epoch-001.pt"  # parents are created
    store.read_file("training/checkpoints/epoch-001.pt", out)
    assert out.stat().st_size == LARGE_SIZE
    assert _sha256(out) == _sha256(large_file)
    assert [p.name for p in out.parent.iterdir()] == ["epoch-001.pt"]  # no temp left
    assert store.list() == ["training/checkpoints/epoch-001.pt"]


def test_list_is_recursive_sorted_and_prefix_filtered(store: ObjectStore) -> None:
    keys = ["b/d/e.txt", "a.txt", "b/c.txt", "bb.txt", "b/d/f/g.bin", "c/x"]
    for key in keys:
        store.write_bytes(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("b/") == ["b/c.txt", "b/d/e.txt", "b/d/f/g.bin"]
    assert store.list("b/d/") == ["b/d/e.txt", "b/d/f/g.bin"]
    assert store.list("b") == ["b/c.txt", "b/d/e.txt", "b/d/f/g.bin", "bb.txt"]  # string prefix
    assert store.list("b/d/e") == ["b/d/e.txt"]
    assert store.list("nothing/") == []
    assert store.list("zz") == []


def test_exists_and_delete(store: ObjectStore) -> None:
    store.write_bytes("x/y.bin", b"1")
    assert store.exists("x/y.bin")
    assert not store.exists("x/z.bin")
    assert not store.exists("x")  # a "directory" is not an object
    store.delete("x/y.bin")
    assert not store.exists("x/y.bin")
    assert store.list() == []
    store.delete("x/y.bin")  # missing: fine
    store.delete("never/was")
    with pytest.raises(ObjectNotFoundError):
        store.read_bytes("x/y.bin")


def test_missing_key_errors_name_the_uri(store: ObjectStore, tmp_path: Path) -> None:
    uri = store.uri_for("pseudo_labels/shard-0003.parquet")
    for read in (store.read_bytes, store.read_text, store.read_json):
        with pytest.raises(ObjectNotFoundError) as info:
            read("pseudo_labels/shard-0003.parquet")
        assert uri in str(info.value)
        assert isinstance(info.value, KeyError)  # callers may catch it as a KeyError
    target = tmp_path / "dl" / "shard.parquet"
    with pytest.raises(ObjectNotFoundError, match=uri):
        store.read_file("pseudo_labels/shard-0003.parquet", target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


BAD_KEYS = ["", "/abs/key", "a/../b", "..", "a\\b", "a//b", "a/", "./a", ".tmp-x", "d/.tmp-x"]


@pytest.mark.parametrize("bad_key", BAD_KEYS)
def test_invalid_keys_are_rejected_with_the_key_named(store: ObjectStore, bad_key: str) -> None:
    operations: list[Callable[[], Any]] = [
        lambda: store.write_bytes(bad_key, b"x"),
        lambda: store.read_bytes(bad_key),
        lambda: store.exists(bad_key),
        lambda: store.delete(bad_key),
        lambda: store.uri_for(bad_key),
        lambda: store.write_json(bad_key, {}),
    ]
    for operation in operations:
        with pytest.raises(ConfigError) as info:
            operation()
        assert repr(bad_key) in str(info.value)
    assert store.list() == []


@pytest.mark.parametrize("bad_prefix", ["/", "/a", "a/../b", "a\\", "a//"])
def test_invalid_list_and_child_prefixes(store: ObjectStore, bad_prefix: str) -> None:
    with pytest.raises(ConfigError):
        store.list(bad_prefix)
    with pytest.raises(ConfigError):
        store.child(bad_prefix)
    with pytest.raises(ConfigError):
        store.child("")


def test_child_stores_share_data_with_their_parent(store: ObjectStore) -> None:
    labels = store.child("run-7/pseudo_labels/")
    labels.write_json("manifest.json", {"shards": 1})
    labels.write_bytes("shards/0000.bin", b"\x00\x01")
    assert store.list() == [
        "run-7/pseudo_labels/manifest.json",
        "run-7/pseudo_labels/shards/0000.bin",
    ]
    assert labels.list() == ["manifest.json", "shards/0000.bin"]
    assert labels.uri_for("manifest.json") == store.uri_for("run-7/pseudo_labels/manifest.json")
    assert labels.uri == store.uri_for("run-7/pseudo_labels")
    shards = store.child("run-7").child("pseudo_labels").child("shards")
    assert shards.read_bytes("0000.bin") == b"\x00\x01"
    # A sibling whose name extends the child's must not leak into the child's listing.
    store.write_bytes("run-70/other", b"x")
    assert store.child("run-7").list() == [
        "pseudo_labels/manifest.json",
        "pseudo_labels/shards/0000.bin",
    ]
    labels.delete("manifest.json")
    assert not store.exists("run-7/pseudo_labels/manifest.json")


def test_reopening_by_uri_sees_the_same_objects(store: ObjectStore) -> None:
    store.child("training").write_text("metrics.csv", "epoch,map\n1,0.5\n")
    again = open_store(store.uri, retry=FAST_RETRY)
    assert again.read_text("training/metrics.csv") == "epoch,map\n1,0.5\n"
    assert open_store(again.uri_for("training"), retry=FAST_RETRY).list() == ["metrics.csv"]
    assert type(again) is type(store)


def test_only_real_objects_are_listed(store: ObjectStore, large_file: Path) -> None:
    for i in range(5):
        store.write_bytes(f"shards/{i:04d}.bin", bytes([i]) * 100)
    store.write_file("model-store/cdul.mar", large_file)
    store.write_bytes("shards/0000.bin", b"overwritten")
    expected = [f"shards/{i:04d}.bin" for i in range(5)] + ["model-store/cdul.mar"]
    assert store.list() == sorted(expected)


def test_write_file_from_a_missing_local_path(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="is not a file"):
        store.write_file("x", tmp_path / "missing.pt")
    assert store.list() == []


# ------------------------------------------------------------------ file:// only


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    store = open_store(f"file://{tmp_path / 'store'}")
    assert isinstance(store, LocalStore)
    return store


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


def test_local_crash_before_rename_keeps_the_old_object(
    local: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.write_json("pseudo_labels/manifest.json", {"version": 1})

    def crash(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StorageError, match="No space left"):
        local.write_json("pseudo_labels/manifest.json", {"version": 2})
    with pytest.raises(StorageError):
        local.write_bytes("pseudo_labels/new.bin", b"data")
    monkeypatch.undo()
    assert local.read_json("pseudo_labels/manifest.json") == {"version": 1}
    assert local.list() == ["pseudo_labels/manifest.json"]
    assert _temp_files(local.root) == []


def test_local_crash_mid_copy_leaves_no_partial_object(
    local: LocalStore, large_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.write_bytes("model-store/cdul.mar", b"old archive")
    real_copy = shutil.copyfileobj

    def copy_then_die(source: Any, target: Any, length: int = 0) -> None:
        target.write(source.read(3 * 1024 * 1024))  # some bytes really reach the temp file
        raise KeyboardInterrupt  # as abrupt as it gets inside Python

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        local.write_file("model-store/cdul.mar", large_file)
    with pytest.raises(KeyboardInterrupt):
        local.write_file("model-store/other.mar", large_file)
    monkeypatch.setattr(shutil, "copyfileobj", real_copy)
    assert local.read_bytes("model-store/cdul.mar") == b"old archive"
    assert not local.exists("model-store/other.mar")
    assert local.list() == ["model-store/cdul.mar"]
    assert _temp_files(local.root) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_local_objects_get_the_mode_the_umask_gives(
    local: LocalStore, tmp_path: Path, umask: int
) -> None:
    """As any tool's new files do: mkstemp's 0600 made a model store that a job wrote
    unreadable to TorchServe running as another user (found running the containers)."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"archive")
    old = os.umask(umask)
    try:
        local.write_bytes("a/bytes.bin", b"1")
        local.write_file("a/file.bin", source)
        local.read_file("a/file.bin", tmp_path / "copied.bin")
        (tmp_path / "plain.bin").write_bytes(b"made by open()")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert (tmp_path / "plain.bin").stat().st_mode & 0o777 == expected
    for path in (local.root / "a" / "bytes.bin", local.root / "a" / "file.bin"):
        assert path.stat().st_mode & 0o777 == expected, path
    assert (tmp_path / "copied.bin").stat().st_mode & 0o777 == expected


def test_local_leftover_temp_files_are_never_listed(local: LocalStore) -> None:
    local.write_bytes("a/b.bin", b"1")
    # What a writer killed by SIGKILL leaves behind.
    (local.root / ".tmp-abc123").write_bytes(b"half")
    (local.root / "a" / ".tmp-def456").write_bytes(b"half")
    (local.root / ".tmp-dir").mkdir()
    (local.root / ".tmp-dir" / "inside").write_bytes(b"half")
    assert local.list() == ["a/b.bin"]
    assert local.list("a/") == ["a/b.bin"]


def test_local_readers_never_see_a_partial_object(local: LocalStore) -> None:
    size = 2 * 1024 * 1024
    versions = [b"A" * size, b"B" * size]
    local.write_bytes("weights.bin", versions[0])
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            local.write_bytes("weights.bin", versions[i % 2])
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            data = local.read_bytes("weights.bin")
            if data not in versions:
                errors.append(f"partial read: {len(data)} bytes")
    finally:
        stop.set()
        thread.join()
    assert errors == []


def test_local_uri_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("file://rel/store")
    relative.write_bytes("k", b"v")
    assert (tmp_path / "rel" / "store" / "k").read_bytes() == b"v"
    assert relative.uri == f"file://{tmp_path}/rel/store"
    assert open_store(str(tmp_path / "rel" / "store")).read_bytes("k") == b"v"  # bare path
    assert open_store(relative.uri).list() == ["k"]
    (tmp_path / "plain-file").write_bytes(b"")
    with pytest.raises(ConfigError, match="not a directory"):
        open_store(f"file://{tmp_path / 'plain-file'}")
    with pytest.raises(ConfigError, match="names no directory"):
        open_store("file://")
    with pytest.raises(ConfigError, match=r"unsupported store URI 'gs://b/p'.*file://, s3://"):
        open_store("gs://b/p")


def test_local_object_and_directory_cannot_share_a_name(local: LocalStore) -> None:
    local.write_bytes("a", b"file")
    with pytest.raises(StorageError, match="cannot write"):
        local.write_bytes("a/b", b"nested")
    local.write_bytes("d/e", b"nested")
    with pytest.raises(StorageError):
        local.write_bytes("d", b"file")
    with pytest.raises(ObjectNotFoundError):
        local.read_bytes("d")


# -------------------------------------------------------- S3: configuration (no server)


def _set_s3_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name in (
        "S3_ENDPOINT",
        "S3_ACCESS_KEY",
        "S3_SECRET_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "S3_REGION",
        "S3_CA_BUNDLE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("S3_ENDPOINT", "S3_ENDPOINT is not set"),
        ("S3_ACCESS_KEY", r"set S3_ACCESS_KEY \(or AWS_ACCESS_KEY_ID\)"),
        ("S3_SECRET_KEY", r"set S3_SECRET_KEY \(or AWS_SECRET_ACCESS_KEY\)"),
    ],
)
def test_s3_missing_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, missing: str, message: str
) -> None:
    values = {"S3_ENDPOINT": "http://127.0.0.1:1", "S3_ACCESS_KEY": "k", "S3_SECRET_KEY": "s"}
    del values[missing]
    _set_s3_env(monkeypatch, **values)
    with pytest.raises(ConfigError, match=message):
        open_store("s3://bucket/run")


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("127.0.0.1:9000", "is not a URL"),
        ("ftp://host:21", "is not a URL"),
        ("http://host:9000/minio", "no path"),
        ("http://host:notaport", "invalid port"),
        ("http://user:hunter2@host:9000", "must not contain credentials"),
    ],
)
def test_s3_malformed_endpoint(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, message: str
) -> None:
    _set_s3_env(monkeypatch, S3_ENDPOINT=endpoint, S3_ACCESS_KEY="k", S3_SECRET_KEY="s")
    with pytest.raises(ConfigError, match=message) as info:
        open_store("s3://bucket/run")
    assert "hunter2" not in str(info.value)


def test_s3_settings_from_env_and_secrets_stay_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_s3_env(
        monkeypatch,
        S3_ENDPOINT="https://minio.example:9443/",
        AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
        AWS_SECRET_ACCESS_KEY="very-secret-value",
        S3_REGION="eu-west-1",
    )
    settings = S3Settings.from_env()
    assert (settings.netloc, settings.secure, settings.region) == (
        "minio.example:9443",
        True,
        "eu-west-1",
    )
    assert settings.endpoint == "https://minio.example:9443"
    assert settings.access_key == "AKIAEXAMPLE"  # AWS_* fallback
    assert "very-secret-value" not in repr(settings)
    assert "AKIAEXAMPLE" not in repr(settings)
    monkeypatch.setenv("S3_CA_BUNDLE", "/no/such/ca.pem")
    with pytest.raises(ConfigError, match="S3_CA_BUNDLE"):
        S3Settings.from_env()


@pytest.mark.parametrize(
    "uri", ["s3://ab/run", "s3://Bad_Bucket/run", "s3:///run", "s3://bucket/a/../b"]
)
def test_s3_bad_uri(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    _set_s3_env(monkeypatch, S3_ENDPOINT="http://127.0.0.1:1", S3_ACCESS_KEY="k", S3_SECRET_KEY="s")
    with pytest.raises(ConfigError):
        open_store(uri)


def test_retry_policy_env_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RetryPolicy.from_env({}) == RetryPolicy()
    policy = RetryPolicy.from_env(
        {"CDUL_S3_RETRY_ATTEMPTS": "3", "CDUL_S3_RETRY_INITIAL_BACKOFF_S": "0.5"}
    )
    assert (policy.attempts, policy.initial_backoff_s) == (3, 0.5)
    waits = list(RetryPolicy(attempts=6, max_backoff_s=1.0, jitter=0).backoffs())
    assert waits == [0.25, 0.5, 1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="CDUL_S3_RETRY_ATTEMPTS"):
        RetryPolicy.from_env({"CDUL_S3_RETRY_ATTEMPTS": "many"})
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)


def test_retryable_classification() -> None:
    import urllib3

    assert is_retryable(ConnectionRefusedError())
    assert is_retryable(urllib3.exceptions.ProtocolError("reset"))
    assert is_retryable(urllib3.exceptions.MaxRetryError(None, "/", ConnectionResetError()))  # type: ignore[arg-type]
    assert not is_retryable(urllib3.exceptions.SSLError("certificate verify failed"))
    assert not is_retryable(ValueError("bug"))
    assert not is_retryable(FileNotFoundError("local disk"))


# ------------------------------------------------------------- S3: against the server


@pytest.mark.slow
def test_s3_large_write_uses_multipart(
    s3_store: S3Store, s3_server: S3TestServer, large_file: Path
) -> None:
    s3_store.write_file("model-store/cdul.mar", large_file)
    stat = s3_server.client().stat_object(s3_store.bucket, "run/model-store/cdul.mar")
    assert stat.size == LARGE_SIZE
    assert stat.etag.endswith("-2")  # a multipart ETag: md5-of-md5s, dash, part count


@pytest.mark.slow
def test_s3_missing_bucket(s3_env: str) -> None:
    with pytest.raises(ObjectNotFoundError, match="bucket 'cdul-no-such-bucket' does not exist"):
        open_store("s3://cdul-no-such-bucket/run", retry=FAST_RETRY)
    uri = f"s3://cdul-on-demand-{uuid.uuid4().hex[:8]}/run"
    created = open_store(uri, retry=FAST_RETRY, create_bucket=True)
    created.write_text("k", "v")
    again = open_store(uri, retry=FAST_RETRY, create_bucket=True)
    assert again.read_text("k") == "v"


@pytest.mark.slow
def test_s3_bucket_removed_after_open_fails_at_once(
    s3_store: S3Store, s3_server: S3TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    s3_server.client().remove_bucket(s3_store.bucket)
    caplog.set_level(logging.WARNING, logger=S3_LOGGER)
    with pytest.raises(ObjectNotFoundError, match=f"bucket '{s3_store.bucket}' does not exist"):
        s3_store.write_bytes("x", b"1")
    with pytest.raises(ObjectNotFoundError, match=s3_store.bucket):
        s3_store.list()
    assert caplog.records == []  # not retried: waiting would not bring the bucket back


@pytest.mark.slow
def test_s3_aws_credential_fallback(
    s3_env: str, s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("S3_ACCESS_KEY")
    monkeypatch.delenv("S3_SECRET_KEY")
    with pytest.raises(ConfigError, match="S3_ACCESS_KEY"):
        open_store(s3_env)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    open_store(s3_env, retry=FAST_RETRY).write_bytes("k", b"v")


@pytest.mark.slow
def test_s3_failed_multipart_upload_leaves_nothing_listed(
    s3_store: S3Store, large_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_store.write_bytes("model-store/cdul.mar", b"previous archive")

    def killed(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed before CompleteMultipartUpload")

    # The process "dies" after uploading every part, and cannot even abort.
    monkeypatch.setattr(Minio, "_complete_multipart_upload", killed)
    monkeypatch.setattr(Minio, "_abort_multipart_upload", killed)
    with pytest.raises(RuntimeError):
        s3_store.write_file("model-store/cdul.mar", large_file)
    with pytest.raises(RuntimeError):
        s3_store.write_file("model-store/new.mar", large_file)
    monkeypatch.undo()
    assert s3_store.list() == ["model-store/cdul.mar"]
    assert not s3_store.exists("model-store/new.mar")
    assert s3_store.read_bytes("model-store/cdul.mar") == b"previous archive"


@pytest.mark.slow
def test_s3_outage_before_a_write_is_ridden_out(
    s3_env: str, s3_server: S3TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(s3_env, retry=OUTAGE_RETRY)
    store.write_json("manifest.json", {"shards": 3})
    caplog.set_level(logging.WARNING, logger=S3_LOGGER)
    s3_server.stop_listening()
    timer = s3_server.resume_after(2.0)
    started = time.monotonic()
    store.write_bytes("shards/0001.bin", b"\x01" * 1000)
    elapsed = time.monotonic() - started
    timer.join()
    assert 1.5 < elapsed < 15
    assert store.read_bytes("shards/0001.bin") == b"\x01" * 1000
    assert store.read_json("manifest.json") == {"shards": 3}  # the server kept its data
    retries = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert retries and all("retrying" in r.getMessage() for r in retries)
    assert s3_server.endpoint in retries[0].getMessage()


@pytest.mark.slow
def test_s3_outage_in_the_middle_of_a_multipart_upload(
    s3_env: str,
    s3_server: S3TestServer,
    large_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = open_store(s3_env, retry=OUTAGE_RETRY)
    store.write_text("before.txt", "kept")
    real_upload_part = Minio._upload_part
    outage = threading.Event()
    timers: list[threading.Timer] = []

    def upload_part(self: Minio, *args: Any, **kwargs: Any) -> str:
        # The first part to go out pulls the plug; the timer restores power in 2 s.
        if not outage.is_set():
            outage.set()
            s3_server.stop_listening()
            timers.append(s3_server.resume_after(2.0))
        return real_upload_part(self, *args, **kwargs)

    monkeypatch.setattr(Minio, "_upload_part", upload_part)
    store.write_file("training/checkpoints/last.pt", large_file)
    for timer in timers:
        timer.join()
    assert outage.is_set()
    out = tmp_path / "last.pt"
    store.read_file("training/checkpoints/last.pt", out)
    assert _sha256(out) == _sha256(large_file)
    assert store.read_text("before.txt") == "kept"
    assert store.list() == ["before.txt", "training/checkpoints/last.pt"]


@pytest.mark.slow
def test_s3_down_for_good_raises_unavailable(s3_env: str, s3_server: S3TestServer) -> None:
    store = open_store(s3_env, retry=FAST_RETRY)
    s3_server.stop_listening()
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as info:
        store.write_bytes("pseudo_labels/manifest.json", b"{}")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert s3_server.endpoint in message
    assert "write" in message
    assert store.uri_for("pseudo_labels/manifest.json") in message
    assert "3 attempt" in message
    with pytest.raises(StorageUnavailableError, match="check bucket"):
        open_store(s3_env, retry=FAST_RETRY)  # the bucket check goes through retry too
    s3_server.resume_listening()
    assert store.list() == []


@pytest.mark.slow
def test_s3_slowdown_is_retried(
    s3_store: S3Store, s3_server: S3TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=S3_LOGGER)
    s3_server.inject_slowdown(2)
    s3_store.write_bytes("k", b"v")
    assert s3_store.read_bytes("k") == b"v"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert all("SlowDown" in m for m in messages)
    s3_server.inject_slowdown(10)
    with pytest.raises(StorageUnavailableError, match="SlowDown"):
        s3_store.read_bytes("k")


@pytest.mark.slow
def test_s3_test_server_outage_really_refuses_connections(s3_server: S3TestServer) -> None:
    import socket

    s3_server.stop_listening()
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((s3_server.host, s3_server.port), timeout=1).close()
    finally:
        s3_server.resume_listening()
    with socket.create_connection((s3_server.host, s3_server.port), timeout=1):
        pass


def _children_of(pid: int) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                yield int(entry.name)


@pytest.mark.slow
def test_s3_test_server_leaves_no_process_behind() -> None:
    with S3TestServer() as server:
        pid = server.pid
        assert pid in set(_children_of(os.getpid()))
    assert pid not in set(_children_of(os.getpid()))
