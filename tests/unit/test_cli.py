"""The `cdul` console command, run as a user runs it (the installed entry point)."""

import functools
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_datasets import write_voc

from cdul.cli import COMMANDS, main

CDUL = str(Path(sys.executable).with_name("cdul"))


def cdul(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CDUL, *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command():
    result = cdul("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name):
    result = cdul(name, "--help")
    assert result.returncode == 0, result.stderr
    assert COMMANDS[name].help in result.stdout


def test_snippets_counts_forward_passes():
    result = cdul("snippets", "grid:3x3", "--size", "500x375")
    assert result.returncode == 0
    assert "9 snippets, 10 CLIP forward passes" in result.stdout
    dense = cdul("snippets", "dense:448", "--size", "500x375")
    assert "196 snippets, 1 CLIP forward passes" in dense.stdout


def test_bad_spec_is_one_clear_line_and_exit_2():
    result = cdul("snippets", "banana")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unknown snippet spec 'banana'" in result.stderr


def test_dataset_counts_and_skip_report(tmp_path):
    root = write_voc(tmp_path / "voc")
    result = cdul("dataset", f"voc:{root}:val", "--decode", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert "20 classes" in result.stdout
    assert "skipped" in result.stdout.lower()
    failing = cdul("dataset", f"voc:{root}:val", "--decode")
    assert failing.returncode == 2
    assert "Traceback" not in failing.stderr
    assert ".jpg" in failing.stderr  # names the corrupt file


@pytest.mark.parametrize("verbose", [False, True])
def test_open_clips_info_lines_reach_the_console_only_with_verbose(
    monkeypatch, request, caplog, capsys, verbose
):
    from cdul.core.clip_models import create_clip

    # The root logger as a fresh `cdul` process has it: main() configures logging only
    # when there is no handler (pytest's own come back, and the level, afterwards).
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    request.addfinalizer(functools.partial(root.setLevel, root.level))
    assert main([*(["-v"] if verbose else []), "snippets", "grid:2x2", "--size", "64x64"]) == 0
    root.addHandler(caplog.handler)  # sees every record, unfiltered
    create_clip("cdul-tiny-rn", None)  # open_clip logs a model load through the root logger
    logging.getLogger("cdul.test").info("the project's own line")
    err = capsys.readouterr().err
    open_clip_info = [r.getMessage() for r in caplog.records
                      if r.name == "root" and r.levelno == logging.INFO]  # fmt: skip
    assert open_clip_info, "open_clip logged no INFO line: the test proves nothing"
    assert "INFO cdul.test: the project's own line" in err
    shown = [message for message in open_clip_info if message in err]
    assert shown == (open_clip_info if verbose else [])


def test_random_clip_weights_asked_for_raise_no_warning(caplog) -> None:
    """open_clip warns 'Model initialized randomly' on the root logger; when the caller
    asked for random weights (the world's CLIP before training) that is noise."""
    import logging

    from cdul.core.clip_models import create_clip

    with caplog.at_level(logging.INFO):
        create_clip("cdul-tiny-rn", None)
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    assert not logging.getLogger().filters  # the filter does not outlive the call
