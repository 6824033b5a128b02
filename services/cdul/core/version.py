"""The code version recorded in every manifest: the package version, plus the git
commit when the code runs from a checkout (a container image has no .git: version only)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from cdul import __version__


@functools.cache
def code_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}" if sha else __version__
