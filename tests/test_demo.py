"""``make demo`` (issue 11): the demo prints the dashboard's address; in a terminal it keeps the
dashboard (and the workers) up until Enter is pressed, without one it ends as before.

Both run `agents-worker demo` as a real process on the session's Redis Stack: stdin is
/dev/null for the first, a pseudo-terminal for the second.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
import time

import pytest

from runtime import Keys
from tests.conftest import OPENSSL_DIR, ROOT
from tests.test_web import request

ADDRESS = re.compile(r"Dashboard: (http://127\.0\.0\.1:\d+/)")


def _demo(redis_url: str, keys: Keys, stdin: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_WORKER_")}
    env.pop("REDIS_URL", None)
    env.pop("OPENAI_API_KEY", None)  # the offline demo model
    env |= {
        "REDIS_URL": redis_url,
        "PYTHONPATH": str(ROOT),
        "AGENTS_WORKER_REDIS_EMBEDDED_OPENSSL_DIR": OPENSSL_DIR,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "--key-prefix", keys.prefix, "demo"],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )


class Output:
    """The lines a process writes, read in a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, limit: float = 120) -> re.Match[str]:
        began = time.monotonic()
        while True:
            found = re.search(pattern, self.text)
            if found:
                return found
            if self.proc.poll() is not None or time.monotonic() - began > limit:
                raise AssertionError(f"no {pattern!r} in:\n{self.text[-3000:]}")
            time.sleep(0.05)

    def finish(self, limit: float = 60) -> int:
        try:
            status = self.proc.wait(limit)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._thread.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        return status


@pytest.mark.timeout(180)
def test_without_a_terminal_the_demo_prints_the_address_and_ends(
    redis_url: str, keys: Keys
) -> None:
    out = Output(_demo(redis_url, keys, subprocess.DEVNULL))
    assert out.finish(150) == 0, out.text[-3000:]
    assert ADDRESS.search(out.text), out.text
    assert "press Enter" not in out.text
    assert "Demo finished: every run completed" in out.text


@pytest.mark.timeout(180)
def test_in_a_terminal_the_dashboard_stays_up_until_enter(redis_url: str, keys: Keys) -> None:
    main, terminal = pty.openpty()
    try:
        out = Output(_demo(redis_url, keys, terminal))
        found = out.wait_for(r"The dashboard stays up at \S+: press Enter to stop\.")
        address = ADDRESS.search(out.text)
        assert address is not None and address.group(1) in found.group(0)
        assert "Demo finished" not in out.text and out.proc.poll() is None
        healthz = request(address.group(1) + "healthz")
        assert (healthz.status, healthz.body) == (200, "ok\n")
        page = request(address.group(1))
        assert page.status == 200 and "<html" in page.body.lower()
        os.write(main, b"\n")  # Enter
        assert out.finish(90) == 0, out.text[-3000:]
    finally:
        os.close(main)
        os.close(terminal)
    assert "Demo finished: every run completed" in out.text
    assert out.text.index("press Enter") < out.text.index("Stopping the workers")
