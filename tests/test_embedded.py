"""The embedded Redis Stack: start, stop, restart, stale state, port in use, OpenSSL missing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import redis

from runtime import (
    EmbeddedRedis,
    EmbeddedRedisError,
    OpenSSLMissingError,
    PortInUseError,
)
from runtime.redis import openssl
from runtime.redis.embedded import ServerState, bundled_server
from tests.conftest import embedded_settings


@pytest.fixture
def servers() -> Iterator[list[EmbeddedRedis]]:
    """Servers a test starts; each is stopped afterwards whatever happened."""
    started: list[EmbeddedRedis] = []
    yield started
    for server in started:
        server.stop()


def new_server(servers: list[EmbeddedRedis], data_dir: Path, **changes: object) -> EmbeddedRedis:
    server = EmbeddedRedis(embedded_settings(data_dir, **changes))
    servers.append(server)
    return server


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2)


def test_start_answers_and_serves_every_module(
    servers: list[EmbeddedRedis], tmp_path: Path
) -> None:
    server = new_server(servers, tmp_path)
    status = server.start()
    assert not status.reused
    assert 0 < status.startup_ms < 2000, "start-up to first PING must take under 2 s"
    with client_for(status.url) as client:
        assert client.ping() is True
        names = {module[b"name"] for module in client.module_list()}
        assert {b"search", b"ReJSON", b"timeseries", b"bf"} <= names
        info = client.info("server")
        assert info["tcp_port"] == status.state.port
        assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert server.state_file.is_file()


def test_start_is_idempotent_and_status_finds_it(
    servers: list[EmbeddedRedis], tmp_path: Path
) -> None:
    server = new_server(servers, tmp_path)
    first = server.start()
    again = server.start()
    assert again.reused and again.pid == first.pid and again.url == first.url
    other_process_view = EmbeddedRedis(embedded_settings(tmp_path)).status()
    assert other_process_view is not None and other_process_view.pid == first.pid


def test_stop_then_restart_keeps_data(servers: list[EmbeddedRedis], tmp_path: Path) -> None:
    server = new_server(servers, tmp_path)
    status = server.start()
    with client_for(status.url) as client:
        client.set("kept", "across restarts")
    assert server.stop() is True
    assert server.status() is None
    assert not server.state_file.exists()
    with pytest.raises(redis.ConnectionError), client_for(status.url) as client:
        client.ping()
    assert server.stop() is False  # stopping a stopped server is a no-op
    restarted = server.start()
    assert restarted.pid != status.pid
    with client_for(restarted.url) as client:
        assert client.get("kept") == b"across restarts"


def test_sigkilled_server_is_detected_and_replaced(
    servers: list[EmbeddedRedis], tmp_path: Path
) -> None:
    server = new_server(servers, tmp_path)
    status = server.start()
    with client_for(status.url) as client:
        client.set("before-kill", 1)
    os.kill(status.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while server.status() is not None:
        assert time.monotonic() < deadline, "a killed server still reported as running"
        time.sleep(0.01)
    revived = server.start()
    with client_for(revived.url) as client:
        assert client.get("before-kill") == b"1"  # the AOF kept the write


def _write_state(server: EmbeddedRedis, pid: int) -> None:
    server.data_dir.mkdir(parents=True, exist_ok=True)
    state = ServerState(
        pid=pid,
        host="127.0.0.1",
        port=1,
        unix_socket=None,
        started_at=time.time(),
        startup_ms=1.0,
        binary="/nonexistent/redis-server",
        modules=[],
    )
    server.state_file.write_bytes(msgspec.json.encode(state))


def test_stale_pid_of_a_dead_process(servers: list[EmbeddedRedis], tmp_path: Path) -> None:
    server = new_server(servers, tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_state(server, gone.pid)
    assert server.status() is None
    assert not server.state_file.exists()
    _write_state(server, gone.pid)
    status = server.start()
    assert not status.reused and status.pid != gone.pid


def test_stale_pid_reused_by_another_program(servers: list[EmbeddedRedis], tmp_path: Path) -> None:
    server = new_server(servers, tmp_path)
    _write_state(server, os.getpid())  # alive, but it is pytest, not a redis-server
    status = server.start()
    assert status.pid != os.getpid()


def test_corrupt_state_file(servers: list[EmbeddedRedis], tmp_path: Path) -> None:
    server = new_server(servers, tmp_path)
    server.data_dir.mkdir(parents=True, exist_ok=True)
    server.state_file.write_text("{not json")
    assert server.start().pid > 0


def test_configured_port_in_use(servers: list[EmbeddedRedis], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = new_server(servers, tmp_path, port=port)
        with pytest.raises(PortInUseError) as err:
            server.start()
    assert f"port {port}" in str(err.value)
    assert "redis.embedded.port" in str(err.value)
    assert server.status() is None


def test_fixed_free_port_is_used(servers: list[EmbeddedRedis], tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status = new_server(servers, tmp_path, port=port).start()
    assert status.url == f"redis://127.0.0.1:{port}/0"


def test_unix_socket_and_password(servers: list[EmbeddedRedis], tmp_path: Path) -> None:
    server = new_server(servers, tmp_path, unix_socket=True, password="s3cret")
    status = server.start()
    assert status.url.startswith(f"unix://{tmp_path}/redis.sock")
    with client_for(status.url) as client:
        assert client.ping() is True
    with (
        pytest.raises(redis.AuthenticationError),
        redis.Redis(unix_socket_path=str(tmp_path / "redis.sock")) as anonymous,
    ):
        anonymous.ping()
    assert "s3cret" not in server.state_file.read_text()


def test_plain_redis_without_modules(servers: list[EmbeddedRedis], tmp_path: Path) -> None:
    status = new_server(servers, tmp_path, modules=[]).start()
    with client_for(status.url) as client:
        assert client.module_list() == []


def test_refuses_exposed_server_without_password(tmp_path: Path) -> None:
    server = EmbeddedRedis(embedded_settings(tmp_path, host="0.0.0.0"))
    with pytest.raises(EmbeddedRedisError, match="without a password"):
        server.start()


def test_missing_server_binary(tmp_path: Path) -> None:
    server = EmbeddedRedis(embedded_settings(tmp_path, server_binary="/nope/redis-server"))
    with pytest.raises(EmbeddedRedisError, match="is not an executable file"):
        server.start()


@pytest.fixture
def no_openssl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Simulate a system without OpenSSL 1.1 and with an empty project-local cache."""
    monkeypatch.setattr(openssl, "missing_libraries", lambda binary, dirs=(): ["libssl.so.1.1"])
    return tmp_path / "empty-openssl"


def test_openssl_missing_and_fetch_off(no_openssl: Path, tmp_path: Path) -> None:
    server = EmbeddedRedis(
        embedded_settings(tmp_path / "data", openssl_dir=str(no_openssl), fetch_openssl=False)
    )
    with pytest.raises(OpenSSLMissingError) as err:
        server.start()
    message = str(err.value)
    assert "needs OpenSSL 1.1" in message
    assert "fetch_openssl is off" in message
    assert "REDIS_URL=redis://" in message
    assert server.status() is None


def test_openssl_missing_and_fetch_impossible(
    no_openssl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb
    server = EmbeddedRedis(embedded_settings(tmp_path / "data", openssl_dir=str(no_openssl)))
    with pytest.raises(OpenSSLMissingError, match="apt-get is not available on this system"):
        server.start()


def test_openssl_found_in_project_cache_is_used(tmp_path: Path) -> None:
    binary, _ = bundled_server()
    if not openssl.missing_libraries(binary):
        pytest.skip("this system has OpenSSL 1.1: the project cache is not consulted")
    server = EmbeddedRedis(embedded_settings(tmp_path))
    _, library_dir = server.prepare()
    assert library_dir is not None
    assert {p.name for p in library_dir.iterdir()} >= set(openssl.LIBRARIES)


def test_security_uri_ignores_comments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\n# http://snapshot.example/archive/debian-security/2025\n"
        "URIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    monkeypatch.setattr(openssl, "_APT_SOURCES", (deb822,))
    assert openssl.security_uri() == "http://mirror.example/debian-security"
    one_line = tmp_path / "sources.list"
    one_line.write_text("# deb http://old.example/security x\ndeb http://m.example/debian stable\n")
    monkeypatch.setattr(openssl, "_APT_SOURCES", (one_line,))
    assert openssl.security_uri() == "http://deb.debian.org/debian-security"
