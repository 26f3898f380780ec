"""Stopping with a dashboard tab open: its live stream (``/api/stream``) ends by itself.

``serve`` sets ``WebState.closing`` before it tells uvicorn to exit, and the live feed returns
on it, so the response ends with its last chunk instead of holding the server for its grace
period and then being cancelled (``ERROR Cancel 1 running task(s)``, "Exception in ASGI
application" and a traceback). Checked with real processes, each with a stream held open:
``agents-worker run`` stopped with SIGTERM, ``agents-worker dashboard`` with SIGINT and
``agents-worker demo`` with Enter.
"""

from __future__ import annotations

import os
import pty
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from runtime import Keys
from tests.conftest import free_port
from tests.supervision import FAST, Running, supervise, supervisors
from tests.test_demo import ADDRESS, Output, _demo
from tests.test_web_command import _dashboard

CANCEL_PATH = ("Traceback", "ERROR", "Cancel ", "Exception in ASGI application")
"""What uvicorn logs when it has to cancel a request still running after its grace."""


class LiveStream:
    """A browser tab's ``GET /api/stream`` over a raw socket, read in a thread until EOF."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(
            b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )
        self.data = b""
        self.closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.data += chunk
        except OSError:
            pass
        self.closed = True

    def wait_for(self, marker: bytes, limit: float = 30) -> None:
        began = time.monotonic()
        while marker not in self.data:
            if self.closed or time.monotonic() - began > limit:
                raise AssertionError(f"no {marker!r} in the stream: {self.data[-500:]!r}")
            time.sleep(0.02)

    def finish(self, limit: float = 30) -> bytes:
        self._thread.join(limit)
        self.sock.close()
        return self.data


@pytest.fixture
def runs() -> Iterator[list[Running]]:
    with supervisors() as started:
        yield started


def _ended_by_itself(data: bytes) -> None:
    """The response ended with the last chunk of its chunked body: not cut mid-way."""
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert b"text/event-stream" in data.split(b"\r\n\r\n", 1)[0]
    assert data.endswith(b"0\r\n\r\n"), data[-200:]


def _no_cancel_path(output: str) -> None:
    for line in output.splitlines():
        assert not any(mark in line for mark in CANCEL_PATH), output[-3000:]


@pytest.mark.timeout(120)
async def test_sigterm_to_the_supervisor_ends_an_open_live_stream(
    runs: list[Running], redis_url: str, keys: Keys
) -> None:
    port = free_port()
    run = supervise(runs, redis_url, keys.prefix, "-w", "1", "--http-port", str(port), sets=FAST)
    await run.wait_for(r"worker\.ready slot=")
    stream = LiveStream(port)
    stream.wait_for(b"event: overview")
    assert await run.stop() == 0, run.output[-3000:]
    assert run.count(r"supervisor\.stopped") == 1
    _no_cancel_path(run.output)
    _ended_by_itself(stream.finish())


@pytest.mark.timeout(120)
def test_sigint_to_the_dashboard_ends_an_open_live_stream(redis_url: str, keys: Keys) -> None:
    out = _dashboard("--redis-url", redis_url, "--key-prefix", keys.prefix, "dashboard", "-p", "0")
    try:
        found = out.wait_for(r"Dashboard: http://127\.0\.0\.1:(\d+)/", 60)
        stream = LiveStream(int(found.group(1)))
        stream.wait_for(b"event: overview")
        out.proc.send_signal(signal.SIGINT)
        assert out.finish(30) == 0, out.text
    finally:
        if out.proc.poll() is None:
            out.proc.kill()
    assert out.lines[-1] == "Dashboard stopped."
    _no_cancel_path(out.text)
    _ended_by_itself(stream.finish())


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_enter_in_the_demo_ends_an_open_live_stream(redis_url: str, keys: Keys) -> None:
    main, terminal = pty.openpty()
    try:
        out = Output(_demo(redis_url, keys, terminal))
        out.wait_for(r"The dashboard stays up at \S+: press Enter to stop\.")
        address = ADDRESS.search(out.text)
        assert address is not None
        stream = LiveStream(int(address.group(1).rsplit(":", 1)[1].rstrip("/")))
        stream.wait_for(b"event: overview")
        os.write(main, b"\n")  # Enter
        assert out.finish(90) == 0, out.text[-3000:]
    finally:
        os.close(main)
        os.close(terminal)
    assert "Demo finished: every run completed" in out.text
    _no_cancel_path(out.text)
    _ended_by_itself(stream.finish())
