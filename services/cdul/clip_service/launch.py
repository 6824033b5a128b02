"""Starting ``cdul clip-serve`` as its own process and waiting until it serves.

Used wherever the service must run beside something else on one machine (the demo,
the P1/P2 benchmark, the SIGTERM test): the server picks a free port (``--port 0``)
and announces it on stdout once the model is loaded and health says SERVING.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from cdul.core.errors import CdulError

CDUL = str(Path(sys.executable).with_name("cdul"))
READY = "SERVING on port"


class ClipServiceStartError(CdulError):
    """``cdul clip-serve`` exited or stayed silent instead of serving."""


def spawn(
    args: list[str], *, stderr: IO[str] | int | None = None, timeout_s: float = 180.0
) -> tuple[subprocess.Popen[str], int]:
    """Run ``cdul clip-serve ARGS --host 127.0.0.1 --port 0``; return it and its port."""
    process = subprocess.Popen(
        [CDUL, "clip-serve", *args, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    try:  # whatever interrupts the wait (Ctrl-C included), no server is left behind
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if READY in line:
                return process, int(line.split(READY)[1].split()[0])
            if not line and process.poll() is not None:
                raise ClipServiceStartError(
                    f"cdul clip-serve exited with code {process.returncode}"
                )
        raise ClipServiceStartError(f"cdul clip-serve did not serve within {timeout_s:.0f} s")
    except BaseException:
        stop(process, grace_s=5)
        raise


def stop(process: subprocess.Popen[str], grace_s: float = 30.0) -> int:
    """SIGTERM (the server drains accepted requests), then SIGKILL after ``grace_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
