"""Run a TorchServe on this machine and always take it down again.

Used by the serving tests, the P5 benchmark and local demos. TorchServe 0.12 has
process-global state that makes two instances (or a leftover one) trip over each
other; each instance here gets its own of everything:

* free loopback ports for the inference, management and metrics APIs, for the gRPC
  inference and management servers (TorchServe always starts them, on 7070/7071
  unless told otherwise) and its own ``initial_worker_port``;
* its own working directory, which is where the JVM writes ``key_file.json`` (the
  token-auth keys) and where ``torchserve --stop`` deletes it;
* its own ``TMPDIR`` (the launcher's pid file ``$TMPDIR/.model_server.pid``, which
  decides whether "TorchServe is already running") and ``TEMP`` (becomes
  ``java.io.tmpdir``, where the worker sockets ``.ts.sock.<port>`` live);
* ``LOG_LOCATION`` and ``METRICS_LOCATION`` inside the working directory.

Stopping: ``torchserve --stop`` (SIGTERM to the JVM, which stops its workers), a wait
for the whole process group (the server is started in a new session, so JVM and
Python workers share one group), SIGKILL to the group if it lingers, then a wait
until the ports refuse connections, because ``--stop`` returns before the JVM exits.
An ``atexit`` hook does the same if the owner never calls :meth:`stop`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from cdul.core.errors import CdulError
from cdul.serving.readiness import ready_workers

__all__ = [
    "PRODUCTION_CONFIG",
    "LocalTorchServe",
    "TorchServeError",
    "free_port",
    "free_ports",
    "read_properties",
]

#: The production TorchServe settings (package data; the image and compose use this file).
PRODUCTION_CONFIG = Path(__file__).with_name("config.properties")

# A Unix socket path must fit in sun_path (108 bytes on Linux); the worker sockets are
# "<TEMP>/.ts.sock.<port>", so a longer TEMP falls back to a short private directory.
_MAX_SOCKET_DIR = 80


class TorchServeError(CdulError):
    """TorchServe did not start (the message carries the end of its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free TCP ports (all bound at once, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def read_properties(path: str | os.PathLike[str]) -> dict[str, str]:
    """``key=value`` lines of a Java properties file (comments and blanks skipped;
    no line continuations, which TorchServe's configs do not use)."""
    properties: dict[str, str] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        properties[key.strip()] = value.strip()
    return properties


class LocalTorchServe:
    """One TorchServe instance on loopback, serving ``models`` (name -> ``.mar`` file
    name in ``model_store``), configured by ``base_config`` plus ``overrides``.

    ``env`` adds environment variables for the server and its workers (TorchServe
    passes its environment on to the Python workers). Use as a context manager, or
    call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        model_store: str | os.PathLike[str],
        models: Mapping[str, str],
        workdir: str | os.PathLike[str],
        *,
        base_config: str | os.PathLike[str] | None = None,
        overrides: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 180.0,
    ) -> None:
        self.model_store = Path(model_store).resolve()
        self.models = dict(models)
        self.workdir = Path(workdir).resolve()
        self.host = host
        self.python = python
        self.ready_timeout_s = ready_timeout_s
        self.extra_env = dict(env or {})
        self.properties = read_properties(base_config) if base_config else {}
        self.properties.update(overrides or {})
        self.process: subprocess.Popen[bytes] | None = None
        #: Process group of the last start (the launcher's pid), kept after stop().
        self.pgid: int | None = None
        self.inference_port = self.management_port = self.metrics_port = 0
        self.grpc_ports = (0, 0)
        self._log_handle: IO[bytes] | None = None
        self._env: dict[str, str] = {}
        self._short_tmp: Path | None = None

    # -- addresses and keys ------------------------------------------------------------

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    @property
    def ports(self) -> tuple[int, ...]:
        """Every TCP port this instance listens on (0 before start)."""
        return (self.inference_port, self.management_port, self.metrics_port, *self.grpc_ports)

    @property
    def key_file(self) -> Path:
        """Where the JVM writes the token-auth keys: its working directory."""
        return self.workdir / "key_file.json"

    @property
    def token_auth(self) -> bool:
        return self.properties.get("disable_token_authorization", "false").lower() != "true"

    def keys(self) -> dict[str, str]:
        """``{"inference": ..., "management": ..., "API": ...}`` from the key file."""
        data = json.loads(self.key_file.read_text(encoding="utf-8"))
        return {kind: entry["key"] for kind, entry in data.items()}

    def auth_headers(self, kind: str = "inference") -> dict[str, str]:
        """The ``Authorization`` header for the ``inference`` or ``management`` API."""
        return {"Authorization": f"Bearer {self.keys()[kind]}"} if self.token_auth else {}

    @property
    def log_path(self) -> Path:
        return self.workdir / "torchserve.out"

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> LocalTorchServe:
        """Start the server and wait until every model has a READY worker."""
        if self.process is not None:
            raise TorchServeError("this TorchServe is already started")
        tmp = self.workdir / "tmp"
        logs = self.workdir / "logs"
        for directory in (self.workdir, tmp, logs):
            directory.mkdir(parents=True, exist_ok=True)
        if len(str(tmp)) > _MAX_SOCKET_DIR:
            self._short_tmp = Path(tempfile.mkdtemp(prefix="cdul-ts-"))
            tmp = self._short_tmp
        ports = free_ports(6, self.host)
        self.inference_port, self.management_port, self.metrics_port = ports[:3]
        self.grpc_ports = (ports[3], ports[4])
        config = {
            **self.properties,
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": self.metrics_url,
            "grpc_inference_address": self.host,
            "grpc_inference_port": str(self.grpc_ports[0]),
            "grpc_management_address": self.host,
            "grpc_management_port": str(self.grpc_ports[1]),
            # Worker ports only name sockets (in the private TEMP below) on Linux, but a
            # distinct base keeps two instances apart on any platform.
            "initial_worker_port": str(ports[5]),
            "model_store": str(self.model_store),
            "load_models": ",".join(f"{n}={m}" for n, m in self.models.items()),
            "python": self.python,
        }
        config_path = self.workdir / "config.properties"
        config_path.write_text(
            "".join(f"{key}={value}\n" for key, value in config.items()), encoding="utf-8"
        )
        env = {
            key: value
            for key, value in os.environ.items()
            # TS_CONFIG_FILE would replace --ts-config; TS_* settings could leak in.
            if not key.startswith("TS_")
        }
        env.update(self.extra_env)  # e.g. OMP_NUM_THREADS, which the workers inherit
        env.update(
            TMPDIR=str(tmp), TEMP=str(tmp), LOG_LOCATION=str(logs), METRICS_LOCATION=str(logs)
        )
        command = [
            self.python,
            "-m",
            "ts.model_server",
            "--start",
            "--foreground",
            "--ncs",
            "--ts-config",
            str(config_path),
            "--model-store",
            str(self.model_store),
        ]
        log = self.log_path.open("ab")
        self._log_handle = log
        self.process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: launcher, JVM, workers
        )
        self._env = env
        self.pgid = self.process.pid
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server and everything it started; idempotent, never raises."""
        process = self.process
        if process is None:
            return
        self.process = None
        atexit.unregister(self.stop)
        try:
            if process.poll() is None:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(
                        [self.python, "-m", "ts.model_server", "--stop"],
                        cwd=self.workdir,
                        env=self._env,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        timeout=timeout_s,
                        check=False,
                    )
            if not _wait_group_gone(process, timeout_s):
                _signal_group(process.pid, signal.SIGKILL)
                _wait_group_gone(process, 10.0)
            for port in self.ports:
                _wait_port_closed(self.host, port, timeout_s=10.0)
        finally:
            if self._log_handle is not None:
                self._log_handle.close()
                self._log_handle = None
            if self._short_tmp is not None:
                shutil.rmtree(self._short_tmp, ignore_errors=True)
                self._short_tmp = None

    def running(self) -> bool:
        """True while any process of the server's group is alive or a port answers."""
        if self.pgid is not None and _group_alive(self.pgid):
            return True
        return any(port and _accepts(self.host, port) for port in self.ports)

    def __enter__(self) -> LocalTorchServe:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the launcher/JVM output and of the model log, for error messages."""
        parts = []
        for path in (self.log_path, self.workdir / "logs" / "model_log.log"):
            if path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()
                parts.append(f"--- {path.name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        pending = set(self.models)
        while pending:
            if self.process is None or self.process.poll() is not None:
                raise TorchServeError(f"TorchServe exited during start-up\n{self.log_tail()}")
            # TorchServe retries a model whose worker dies while loading (a broken
            # archive, a handler that raises) forever; the first failure is final here.
            failed = self._load_failures(pending)
            if failed:
                raise TorchServeError(
                    f"TorchServe could not load {sorted(failed)}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TorchServeError(
                    f"no READY worker for {sorted(pending)} after {self.ready_timeout_s:.0f} s\n"
                    f"{self.log_tail()}"
                )
            for name in list(pending):
                if self._model_ready(name):
                    pending.discard(name)
            time.sleep(0.25)

    def _load_failures(self, names: set[str]) -> set[str]:
        """Models whose load the JVM reported as failed (in its console output)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
        return {name for name in names if f"Load model failed: {name}," in text}

    def _model_ready(self, name: str) -> bool:
        """True once the management API describes ``name`` with a READY worker."""
        try:
            headers = self.auth_headers("management")
        except (OSError, ValueError, KeyError, TypeError):
            # The key file is not there yet, or caught while the JVM writes it (not
            # atomically: an empty file was read once, failing a test module's start-up).
            return False
        ready, _ = ready_workers(self.management_url, name, headers)
        return ready > 0


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_group_gone(leader: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait until no process of the group ``leader`` heads is left.

    The leader (the launcher) is our child: ``poll()`` reaps it, otherwise its zombie
    would keep the group alive. The JVM and workers are reaped by init.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        leader.poll()
        if not _group_alive(leader.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_port_closed(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while port and _accepts(host, port) and time.monotonic() < deadline:
        time.sleep(0.1)
