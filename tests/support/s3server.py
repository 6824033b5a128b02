"""An S3 server for tests: moto in a child process whose listener can be switched off.

No MinIO binary can be installed here, so the tests talk to moto's S3 implementation
over real HTTP on loopback, through the same MinIO SDK the services use.

Why a child process: moto keeps its buckets in process memory. Running it in a child
lets a test make the port *refuse connections* (the listening socket is closed, every
open keep-alive connection is cut) and later listen again on the same port with all
objects intact, which is what a MinIO restart looks like to a client. A crashed test
cannot leave a server behind either: the child exits as soon as its stdin closes,
which happens when the parent exits for any reason.

The child is built from the same parts as ``moto.server.ThreadedMotoServer``
(werkzeug's ``make_server`` + moto's ``DomainDispatcherApplication`` and
``MotoRequestHandler``). ThreadedMotoServer itself is not used because its ``stop()``
only stops accepting: connections already open stay served by their handler threads,
and it has no hook to inject server errors.

Control protocol (one command per line on the child's stdin, one reply per line on
its stdout, ``ok ...`` or ``error ...``):

    stop      close the listener and cut open connections; keep the data
    start     listen again on the same port
    fail N    answer the next N requests with ``503 SlowDown`` (S3 throttling)
    quit      exit

Run as a script, this file is the child: ``python s3server.py --host H --port P``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

# Test-only credentials: moto accepts any key pair; these are not secrets.
TEST_ACCESS_KEY = "testing"
TEST_SECRET_KEY = "testing"
TEST_REGION = "us-east-1"

_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>cdul-test-fault</RequestId></Error>"
)


def port_accepts(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Return True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:  # ConnectionRefusedError, timeouts, unreachable
        return False


# --------------------------------------------------------------------------- child side


class _FaultInjector:
    """WSGI middleware: answers the next ``remaining`` requests with 503 SlowDown."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app
        self._lock = threading.Lock()
        self.remaining = 0

    def set_failures(self, count: int) -> None:
        with self._lock:
            self.remaining = count

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with self._lock:
            inject = self.remaining > 0
            if inject:
                self.remaining -= 1
        if not inject:
            return self._app(environ, start_response)
        # Drain the request body first: closing a socket with unread input makes the
        # kernel send RST, and the client would see a reset instead of the 503.
        # get_input_stream bounds the read by Content-Length (or de-chunks); a bare
        # read() on wsgi.input would wait for EOF that a keep-alive client never sends.
        from werkzeug.wsgi import get_input_stream

        get_input_stream(environ).read()
        start_response(
            "503 Slow Down",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(_SLOWDOWN_BODY)))],
        )
        return [_SLOWDOWN_BODY]


class _Listener:
    """One werkzeug server at a time on a fixed port, plus the connections it opened."""

    def __init__(self, host: str, port: int, app: Callable[..., Any]) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        self.host = host
        self.port = port
        self._app = app
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        listener = self

        class TrackingHandler(MotoRequestHandler):
            """Remembers its socket so that ``stop`` can cut keep-alive connections."""

            def setup(self) -> None:
                super().setup()
                with listener._lock:
                    listener._connections.add(self.connection)

            def finish(self) -> None:
                with listener._lock:
                    listener._connections.discard(self.connection)
                super().finish()

        self._handler = TrackingHandler

    def start(self) -> None:
        from werkzeug.serving import make_server

        if self._server is not None:
            return
        server = make_server(
            self.host, self.port, self._app, threaded=True, request_handler=self._handler
        )
        self.port = server.server_address[1]  # resolves port 0 on the first start
        thread = threading.Thread(target=server.serve_forever, name="s3-listener", daemon=True)
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        if self._server is None:
            return
        # shutdown() returns once serve_forever has left; werkzeug's serve_forever then
        # closes the listening socket, so new connections are refused from here on.
        self._server.shutdown()
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._server.server_close()  # idempotent; in case serve_forever did not
        self._server = self._thread = None
        with self._lock:
            open_connections = list(self._connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _child_main(argv: list[str]) -> int:
    import logging

    parser = argparse.ArgumentParser(description="moto S3 server with a switchable listener")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    # One access line per request would only fill the log file.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    faults = _FaultInjector(DomainDispatcherApplication(create_backend_app))
    listener = _Listener(args.host, args.port, faults)

    def reply(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        listener.start()
    except (OSError, SystemExit) as exc:  # werkzeug calls sys.exit on bind errors
        reply(f"error cannot listen on {args.host}:{args.port}: {exc}")
        return 1
    reply(f"ok listening {listener.port}")

    # EOF on stdin means the parent is gone (or closed us): exit, never linger.
    for raw in sys.stdin:
        words = raw.split()
        if not words:
            continue
        command = words[0]
        try:
            if command == "stop":
                listener.stop()
                reply("ok stopped")
            elif command == "start":
                listener.start()
                reply(f"ok listening {listener.port}")
            elif command == "fail" and len(words) == 2:
                faults.set_failures(int(words[1]))
                reply(f"ok fail {int(words[1])}")
            elif command == "quit":
                reply("ok quit")
                break
            else:
                reply(f"error unknown command {raw.strip()!r}")
        except (OSError, SystemExit, ValueError) as exc:
            reply(f"error {command}: {exc}")
    listener.stop()
    return 0


# -------------------------------------------------------------------------- parent side


class S3TestServer:
    """Parent-side handle on the child S3 server.

    Usage::

        with S3TestServer() as server:
            os.environ.update(server.env())
            server.stop_listening()      # port now refuses connections
            server.resume_after(2.0)     # a timer brings it back, data intact
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        access_key: str = TEST_ACCESS_KEY,
        secret_key: str = TEST_SECRET_KEY,
        region: str = TEST_REGION,
        command_timeout_s: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self._command_timeout_s = command_timeout_s
        self._proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._log_path: Path | None = None
        self._lock = threading.Lock()
        self._listening = False
        self._closed = False

    # ---- lifecycle

    def start(self) -> S3TestServer:
        """Start the child and wait until it listens; returns self."""
        if self._proc is not None:
            raise RuntimeError("S3TestServer already started")
        log_fd, log_name = tempfile.mkstemp(prefix="cdul-s3server-", suffix=".log")
        self._log_path = Path(log_name)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-u", __file__, "--host", self.host, "--port", str(self.port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_fd,  # a file, not a pipe: an unread pipe would block the child
                text=True,
                bufsize=1,
            )
        finally:
            os.close(log_fd)
        atexit.register(self.close)
        self._reader = threading.Thread(target=self._read_replies, name="s3-replies", daemon=True)
        self._reader.start()
        try:
            reply = self._expect()
            self.port = int(reply.split()[-1])
        except BaseException:
            self.close()
            raise
        self._listening = True
        return self

    def close(self) -> None:
        """Stop the child (politely, then by force) and remove its log. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._listening = False
        atexit.unregister(self.close)
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.flush()
                proc.stdin.close()  # EOF also makes the child exit
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def __enter__(self) -> S3TestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- properties

    @property
    def endpoint(self) -> str:
        """The URL to put in ``S3_ENDPOINT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._listening

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def env(self) -> dict[str, str]:
        """The environment variables the storage layer reads to reach this server."""
        return {
            "S3_ENDPOINT": self.endpoint,
            "S3_ACCESS_KEY": self.access_key,
            "S3_SECRET_KEY": self.secret_key,
            "S3_REGION": self.region,
        }

    # ---- outages and faults

    def stop_listening(self) -> None:
        """Close the listener (the port refuses connections); objects are kept."""
        self._command("stop")
        self._listening = False
        if port_accepts(self.host, self.port):
            raise RuntimeError(f"port {self.port} still accepts connections after stop")

    def resume_listening(self) -> None:
        """Listen again on the same port. A no-op once the server is closed."""
        try:
            self._command("start")
        except RuntimeError:
            if self._closed:
                return  # a late timer after teardown must not raise in its thread
            raise
        self._listening = True

    def resume_after(self, delay_s: float) -> threading.Timer:
        """Resume listening from a timer thread after ``delay_s`` seconds."""
        timer = threading.Timer(delay_s, self.resume_listening)
        timer.daemon = True
        timer.start()
        return timer

    def inject_slowdown(self, count: int) -> None:
        """Answer the next ``count`` requests with ``503 SlowDown`` (0 clears)."""
        self._command(f"fail {count}")

    # ---- direct access, independent of the code under test

    def client(self) -> Any:
        """A plain MinIO client for arranging and inspecting test state."""
        from minio import Minio

        return Minio(
            f"{self.host}:{self.port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=self.region,
        )

    def create_bucket(self, name: str) -> None:
        self.client().make_bucket(name)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the child's stderr, for failure messages."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")[-chars:]

    # ---- plumbing

    def _read_replies(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # stdout closed during teardown
            for line in proc.stdout:
                self._replies.put(line.strip())
        self._replies.put(None)  # EOF marker: the child is gone

    def _expect(self) -> str:
        try:
            reply = self._replies.get(timeout=self._command_timeout_s)
        except queue.Empty:
            raise RuntimeError(
                f"S3 test server did not answer within {self._command_timeout_s}s\n"
                f"{self.log_tail()}"
            ) from None
        if reply is None:
            raise RuntimeError(f"S3 test server exited\n{self.log_tail()}")
        if not reply.startswith("ok"):
            raise RuntimeError(f"S3 test server: {reply}\n{self.log_tail()}")
        return reply

    def _command(self, command: str) -> str:
        with self._lock:
            if self._closed or self._proc is None or self._proc.stdin is None:
                raise RuntimeError("S3 test server is not running")
            self._proc.stdin.write(command + "\n")
            self._proc.stdin.flush()
            return self._expect()


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
