"""One real Label Studio for this folder's tests (started once: it takes ~20 s), allowed to
call a backend on loopback (``ML_BLOCK_LOCAL_IP=false``: the backend's URL;
``SSRF_PROTECTION_ENABLED=false``: its calls and webhooks), as the README tells a user
whose backend runs on their own network."""

from __future__ import annotations

import pytest
from support import label_studio

#: Label Studio's settings that let it call a backend on a private address.
LOCAL_BACKENDS = {"ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false"}


@pytest.fixture(scope="session")
def studio(tmp_path_factory):
    if label_studio.executable() is None:
        pytest.skip("no label-studio executable (set CDUL_LABEL_STUDIO or put it on PATH; "
                    "`.ci/run` installs one)")  # fmt: skip
    with label_studio.running(tmp_path_factory.mktemp("label-studio"), env=LOCAL_BACKENDS) as s:
        yield s
