"""``agents-worker dashboard`` (issue 11): the dashboard on its own, until Ctrl-C or SIGTERM.

Run as a real process on the session's Redis: it prints its address, serves the page, the
probes and ``/metrics``, and stops cleanly on a signal; a port in use and a missing Redis are
one clear line each.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import Keys
from tests.conftest import OPENSSL_DIR, ROOT
from tests.test_demo import Output
from tests.test_web import request


def _dashboard(*args: str, cwd: Path = ROOT) -> Output:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_WORKER_")}
    env.pop("REDIS_URL", None)
    env |= {"PYTHONPATH": str(ROOT), "AGENTS_WORKER_REDIS_EMBEDDED_OPENSSL_DIR": OPENSSL_DIR}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
    )
    return Output(proc)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_dashboard_serves_until_a_signal(redis_url: str, keys: Keys, signum: int) -> None:
    out = _dashboard("--redis-url", redis_url, "--key-prefix", keys.prefix, "dashboard", "-p", "0")
    try:
        found = out.wait_for(r"Dashboard: (http://127\.0\.0\.1:\d+/)  \(Ctrl-C to stop\)", 60)
        url = found.group(1)
        assert "read-only: set web.token" in out.text
        assert request(url + "healthz").body == "ok\n"
        assert request(url + "readyz").body == "ready\n"
        page = request(url)
        assert page.status == 200 and "<html" in page.body.lower()
        metrics = request(url + "metrics")
        assert metrics.status == 200 and "agents_worker_redis_up 1.0" in metrics.body
        assert "agents_worker_workers" not in metrics.body  # no supervisor here
        out.proc.send_signal(signum)
        assert out.finish(30) == 0, out.text
    finally:
        if out.proc.poll() is None:
            out.proc.kill()
    assert out.lines[-1] == "Dashboard stopped."
    assert "Traceback" not in out.text


def test_a_port_in_use_is_one_clear_line(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _dashboard("--redis-url", redis_url, "dashboard", "--port", str(port))
        assert out.finish(60) == 1
    errors = [line for line in out.lines if line.startswith("Error: ")]
    assert len(errors) == 1, out.text
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in errors[0]
    assert "web.port" in errors[0] and "--port" in errors[0]
    assert "Traceback" not in out.text


def test_without_a_redis_it_says_so(tmp_path: Path) -> None:
    out = _dashboard("dashboard", "--port", "0", cwd=tmp_path)  # no URL, no embedded server
    assert out.finish(60) == 1
    assert re.search(r"Error: no Redis to talk to", out.text), out.text
    assert not (tmp_path / ".agents-worker").exists()  # it started no server
