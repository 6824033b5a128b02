"""The committed gRPC stubs are what protos/ generates today."""

import filecmp

from cdul.clip_service import codegen


def test_committed_stubs_are_current(tmp_path):
    codegen.generate(tmp_path)
    for generated in tmp_path.rglob("*.py*"):
        committed = codegen.OUT / generated.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} missing: run `make proto`"
        assert filecmp.cmp(generated, committed, shallow=False), (
            f"{committed} stale: run `make proto`"
        )
