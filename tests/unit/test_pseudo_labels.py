"""The pseudo-label artefact itself: table shapes and manifest checks."""

import pytest
from support.shards import manifest, vectors

from cdul.core.errors import ConfigError, StorageError
from cdul.core.pseudo_labels import LabelManifest, to_table
from cdul.core.settings import differences


def test_table_shapes_and_manifest_checks():
    with pytest.raises(ConfigError, match="expected"):
        to_table(["a"], vectors(2, 0), None)
    with pytest.raises(StorageError, match="malformed"):
        LabelManifest.from_json({"dataset": "x"})
    changed = differences(manifest().settings(), manifest(limit=10).settings())
    assert changed == ["limit: stored None, now 10"]
