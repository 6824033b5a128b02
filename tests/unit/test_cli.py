"""The `cdul` console command, run as a user runs it (the installed entry point)."""

import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_datasets import write_voc

from cdul.cli import COMMANDS

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
