"""Starting and stopping TorchServe: a failed start leaves nothing behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from serving_support import TEST_CONFIG

from cdul.serving.local import LocalTorchServe, TorchServeError

pytestmark = pytest.mark.slow


def test_broken_archive_fails_fast_and_leaves_nothing_running(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "cdul.mar").write_bytes(b"this is not a zip archive")
    server = LocalTorchServe(
        store, {"cdul": "cdul.mar"}, tmp_path / "ts", base_config=TEST_CONFIG, ready_timeout_s=90
    )
    started = time.monotonic()
    with pytest.raises(TorchServeError, match="could not load") as failure:
        server.start()
    # TorchServe itself would retry the worker forever; the harness gives up at the
    # first "Load model failed" and shows the log.
    assert time.monotonic() - started < 60
    assert "Traceback" in str(failure.value) or "Load model failed" in str(failure.value)
    assert server.process is None
    assert server.pgid is not None and not server.running()
    assert not (tmp_path / "ts" / "key_file.json").exists()  # `torchserve --stop` removed it
