"""deploy/install.py: the venv's install from the lock with uv (the Makefile's only install
step). Its success path runs on every clean checkout (`make install` builds the venv this
suite runs in); here, the parts worked out by hand and its errors."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from deploy_support import ROOT

_spec = importlib.util.spec_from_file_location("cdul_install", ROOT / "deploy" / "install.py")
install = importlib.util.module_from_spec(_spec)
sys.modules["cdul_install"] = install
_spec.loader.exec_module(install)

LOCK = ROOT / "requirements" / "dev.txt"


def test_uv_comes_from_the_lock_with_every_hash() -> None:
    entry = install.lock_entry(LOCK, "uv")
    block = re.search(r"^uv==\S+ \\\n(?:\s+--hash=\S+(?: \\)?\n)+", LOCK.read_text(), re.M)
    assert block is not None
    hashes = re.findall(r"--hash=sha256:[0-9a-f]{64}", block.group(0))
    assert entry.split()[0] == block.group(0).split()[0]  # uv==VERSION, as locked
    assert entry.split()[1:] == hashes and len(hashes) >= 1
    assert entry.endswith("\n") and entry.count("\n") == 1  # one requirement line


def test_a_lock_without_uv_is_named(tmp_path: Path) -> None:
    lock = tmp_path / "dev.txt"
    lock.write_text("numpy==2.0.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(install.InstallError, match=r"dev\.txt has no hashed entry for uv"):
        install.lock_entry(lock, "uv")
    lock.write_text("uv==0.13.9\n")  # unhashed: refused too
    with pytest.raises(install.InstallError, match="no hashed entry for uv"):
        install.lock_entry(lock, "uv")


def test_pips_sources_become_uvs_flags() -> None:
    config = "\n".join([
        "global.cert='/etc/ssl/certs/ca-certificates.crt'",
        "global.constraint='/etc/xdg/pip/constraints.txt'",
        "global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'",
        "global.find-links='/opt/old-wheels'",
        "global.index-url='https://mirror.example/simple'",
        ":env:.default-timeout='180'",
        ":env:.find-links='/opt/wheels'",  # the environment wins, as in pip
    ])  # fmt: skip
    flags, environment = install.pip_sources(config)
    assert flags == [
        "--extra-index-url", "file:///opt/a/simple", "--extra-index-url", "file:///opt/b/simple",
        "--find-links", "/opt/wheels",
        "--index-url", "https://mirror.example/simple",
    ]  # fmt: skip
    assert environment == {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}
    assert install.pip_sources("") == ([], {})  # no configuration: uv's default, PyPI


def test_the_lock_is_installed_by_hash_without_resolving() -> None:
    steps = dict(install.uv_steps(Path("/v/bin/python"), Path("/v/bin/uv"), LOCK,
                                  ["--find-links", "/opt/wheels"]))  # fmt: skip
    assert list(steps) == ["the lock", "the project", "uv pip check"]
    lock = steps["the lock"]
    assert {"--require-hashes", "--no-deps", "--compile-bytecode"} <= set(lock)
    assert lock[-2:] == ["-r", str(LOCK)] and "/opt/wheels" in lock
    assert lock[lock.index("--python") + 1] == "/v/bin/python"
    project = steps["the project"]
    assert "--no-deps" in project and project[-2:] == ["--editable", str(ROOT)]


def test_a_missing_venv_and_a_failing_step_end_in_one_line(tmp_path: Path, capsys) -> None:
    assert install.main(["--venv", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no bin/python: make the venv first" in err
    with pytest.raises(install.InstallError, match=r"^the lock failed: .*\(command: "):
        install._run("the lock", [sys.executable, "-c", "import sys; sys.exit('no such file')"])
    with pytest.raises(install.InstallError, match=r"^uv pip check: cannot run"):
        install._run("uv pip check", [str(tmp_path / "missing-uv"), "pip", "check"])
