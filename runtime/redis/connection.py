"""The Redis adapter edge: clients built from settings, errors translated, server facts read.

    async with open_redis(settings) as conn:      # embedded server started if no URL is set
        await conn.client.set(conn.keys.scratch("x"), 1)

``redis.exceptions.*`` are turned into :mod:`runtime.errors` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio
import redis.exceptions

try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis comes with the redis[hiredis] requirement
    _pack = None  # type: ignore[assignment]

from runtime.errors import (
    MissingModuleError,
    RedisCommandError,
    RedisConnectionError,
    RedisTimeoutError,
)
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.redaction import redact_text, redact_url
from runtime.redis.embedded import EmbeddedRedis, ServerStatus
from runtime.settings.model import RedisSettings, Settings

__all__ = [
    "MODULES",
    "Batch",
    "Connection",
    "ServerInfo",
    "create_client",
    "execute",
    "first_error",
    "open_redis",
    "queue_script",
    "read_server_info",
    "require_modules",
    "run_batch",
    "translate_errors",
]

log = get_logger(__name__)

# Our module names → the names MODULE LIST reports, and a command each one adds.
MODULES: dict[str, tuple[str, str]] = {
    "search": ("search", "FT.SEARCH"),
    "json": ("ReJSON", "JSON.GET"),
    "timeseries": ("timeseries", "TS.ADD"),
    "bloom": ("bf", "BF.ADD"),
}
_COMMAND_MODULE = {command.split(".")[0]: name for name, (_, command) in MODULES.items()}


@contextlib.contextmanager
def translate_errors(action: str, url: str | None = None) -> Iterator[None]:
    """Re-raise Redis errors met while doing *action* as :class:`runtime.errors.RedisError`.

    Works around ``await`` too: ``with translate_errors("enqueue"): await client.xadd(…)``.
    """
    where = f" at {redact_url(url)}" if url else ""
    try:
        yield
    except redis.exceptions.TimeoutError as exc:
        raise RedisTimeoutError(f"{action}: Redis{where} did not answer in time") from exc
    except redis.exceptions.ConnectionError as exc:
        if _pool_full(exc):
            raise RedisConnectionError(
                f"{action}: every pooled connection to Redis{where} stayed in use: the "
                "connection pool is full (redis.max_connections; a full pool waits up to "
                "redis.connect_timeout for a free connection)"
            ) from exc
        raise RedisConnectionError(
            f"{action}: cannot reach Redis{where}: {redact_text(str(exc))}"
        ) from exc
    except redis.exceptions.ResponseError as exc:
        module = _module_of_unknown_command(str(exc))
        if module is not None:
            raise MissingModuleError(module, action) from exc
        raise RedisCommandError(f"{action}: Redis refused the command: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise RedisCommandError(f"{action}: {redact_text(str(exc))}") from exc


# What redis-py raises when no pooled connection is free: MaxConnectionsError (≥ 5.3, a
# ConnectionError) or a ConnectionError with one of these messages (older versions, and the
# blocking pool's wait running out).
_POOL_FULL = ("Too many connections", "No connection available.")


def _pool_full(exc: redis.exceptions.ConnectionError) -> bool:
    return isinstance(exc, redis.exceptions.MaxConnectionsError) or str(exc) in _POOL_FULL


def _module_of_unknown_command(message: str) -> str | None:
    if not message.lower().startswith("unknown command"):
        return None
    for prefix, module in _COMMAND_MODULE.items():
        if f"'{prefix.lower()}." in message.lower():
            return module
    return None


def queue_script(pipe: Any, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue a registered Lua *script* on a pipeline, as EVAL.

    redis-py sends ``SCRIPT EXISTS`` (a round trip of its own) before every pipeline that
    holds EVALSHA calls; EVAL needs no such check, can never fail with NOSCRIPT after a
    restart, and Redis still compiles each script once (it caches them by their hash).
    """
    pipe.eval(script.script, len(keys), *keys, *args)


class Batch:
    """Commands for one round trip, kept as their arguments: a lean stand-in for a redis-py
    pipeline on the paths every agent run takes (see :func:`run_batch`).

    Its methods take redis-py's arguments for the commands those paths send, so code that
    queues on "a pipeline" (``TaskContext.ack_in``, ``RunStore.finish``) takes either.
    """

    __slots__ = ("commands",)

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.commands.append(args)

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append(("EVAL", script, numkeys, *keys_and_args))

    def hset(
        self,
        name: Any,
        key: Any = None,
        value: Any = None,
        mapping: dict[Any, Any] | None = None,
        items: list[Any] | None = None,
    ) -> None:
        pairs: list[Any] = [] if key is None else [key, value]
        for field_, value_ in (mapping or {}).items():
            pairs += (field_, value_)
        self.commands.append(("HSET", name, *pairs, *(items or ())))

    def hmget(self, name: Any, keys: Sequence[Any]) -> None:
        self.commands.append(("HMGET", name, *keys))

    def expire(self, name: Any, time: int) -> None:
        self.commands.append(("EXPIRE", name, time))

    def xadd(
        self,
        name: Any,
        fields: dict[Any, Any],
        id: Any = "*",
        maxlen: int | None = None,
        approximate: bool = True,
    ) -> None:
        trim: tuple[Any, ...] = ()
        if maxlen is not None:
            trim = ("MAXLEN", "~", maxlen) if approximate else ("MAXLEN", maxlen)
        flat = [part for pair in fields.items() for part in pair]
        self.commands.append(("XADD", name, *trim, id, *flat))

    def xread(
        self, streams: dict[Any, Any], count: int | None = None, block: int | None = None
    ) -> None:
        options: tuple[Any, ...] = () if block is None else ("BLOCK", block)
        if count is not None:
            options += ("COUNT", count)
        self.commands.append(("XREAD", *options, "STREAMS", *streams, *streams.values()))

    def xack(self, name: Any, groupname: Any, *ids: Any) -> None:
        self.commands.append(("XACK", name, groupname, *ids))

    def xdel(self, name: Any, *ids: Any) -> None:
        self.commands.append(("XDEL", name, *ids))


async def run_batch(
    client: redis.asyncio.Redis, batch: Batch, *, resend: bool = False
) -> list[Any]:
    """Send *batch* in one write and return the replies as Redis sent them, error replies as
    exception objects in their place: none of redis-py's reply callbacks runs (``EXPIRE``
    gives ``1``, not ``True``; ``XREAD`` gives the RESP2 list or the RESP3 map, an entry's
    fields a flat list), and strings come as bytes whether or not the client decodes its
    replies.

    The commands are packed by hiredis (C) and sent in one write; the replies are read with
    the connection's ``read_response(disable_decoding=True)`` under one timeout for them all:
    a fraction of what a redis-py pipeline costs in Python, on the paths every run takes.
    Only redis-py's public API is used (pool ``get_connection``/``release``, connection
    ``send_packed_command``/``read_response``/``disconnect``/``retry``), checked on 5.2.1
    and 8.1.

    After a connection error or a timeout the commands may or may not have run. With
    *resend* they are sent again as the connection's retry policy (its ``retry``) says, for
    commands that are safe to repeat (fenced scripts, reads); without, the error is raised at
    once, for commands that must not run twice (a submit draws a number and adds an entry).
    The runtime's own clients (:func:`create_client`, like every client made by redis-py's
    ``from_url``) have no retry policy (``Retry(NoBackoff(), 0)``): for them *resend* sends
    nothing again. (A client built with ``redis.asyncio.Redis(host=...)`` has redis-py's
    default policy: in 8.1, 10 retries with exponential backoff and jitter.)

    A client other than ``redis.asyncio.Redis`` (a cluster client) gets redis-py's own
    pipeline, and its reply callbacks.
    """
    commands, batch.commands = batch.commands, []
    if not isinstance(client, redis.asyncio.Redis) or _pack is None:  # pragma: no cover
        async with client.pipeline(transaction=False) as pipe:
            for args in commands:
                pipe.execute_command(*args)
            return list(await pipe.execute(raise_on_error=False))
    try:
        packed = b"".join(_pack(args) for args in commands)
    except TypeError as exc:  # e.g. None or a bool among the arguments
        raise redis.exceptions.DataError(f"cannot send a command: {exc}") from None
    pool: Any = client.connection_pool  # redis-py leaves its methods untyped
    conn = await _take(pool)
    try:
        if resend:
            # between tries the socket is dropped: the next one connects afresh
            replies: list[Any] = await conn.retry.call_with_retry(
                lambda: _exchange(conn, packed, len(commands)), lambda _: conn.disconnect()
            )
        else:
            replies = await _exchange(conn, packed, len(commands))
    except BaseException:
        with anyio.CancelScope(shield=True):  # replies may be left unread: drop the socket
            await conn.disconnect(nowait=True)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await pool.release(conn)
    return replies


async def _take(pool: Any) -> Any:
    """A connection from *pool*: redis-py < 5.3 wants a command name (unused by a plain
    pool), later versions warn when one is given."""
    kind: Any = type(pool)
    if _wants_command_name(kind):
        return await pool.get_connection("_")
    return await pool.get_connection()


@functools.cache
def _wants_command_name(pool_type: Any) -> bool:
    parameter = inspect.signature(pool_type.get_connection).parameters.get("command_name")
    return parameter is not None and parameter.default is inspect.Parameter.empty


async def _exchange(conn: Any, packed: bytes, count: int) -> list[Any]:
    """Send *packed* and read *count* replies (strings as bytes), error replies as exception
    objects: every reply is read, errors too, so the socket stays in step.

    The replies are read under one timeout (``socket_timeout``) for them all: each
    ``read_response`` is told not to set up a timeout of its own (``timeout=math.inf``,
    redis-py's documented value for that), a cost paid once per batch, not once per reply.
    When the timeout cancels a read, ``read_response`` drops the socket.
    """
    await conn.send_packed_command(packed)
    replies: list[Any] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):
            for _ in range(count):
                try:
                    reply = await conn.read_response(disable_decoding=True, timeout=math.inf)
                    replies.append(reply)
                except redis.exceptions.ResponseError as exc:  # an error reply, read in full
                    replies.append(exc)
    except TimeoutError:  # read_response dropped the socket as it was cancelled
        where = getattr(conn, "host", None) or getattr(conn, "path", "Redis")
        raise redis.exceptions.TimeoutError(f"Timeout reading from {where}") from None
    return replies


def first_error(replies: Sequence[Any]) -> None:
    """Raise the first error reply among *replies*, if any."""
    for reply in replies:
        if isinstance(reply, redis.exceptions.RedisError):
            raise reply


async def execute(client: redis.asyncio.Redis, *args: str | bytes | int | float) -> Any:
    """Run a raw command (module commands have no typed wrapper in redis-py)."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def create_client(settings: RedisSettings, url: str) -> redis.asyncio.Redis:
    """An asyncio client for *url* with the pool and timeouts of *settings* (bytes replies).

    Its pool holds at most ``redis.max_connections`` connections; when all are in use, a
    command waits up to ``redis.connect_timeout`` seconds for one to be released, then fails
    with an error that says the pool is full. Its connections have no retry policy.
    """
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.max_connections,
        timeout=settings.connect_timeout,
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=settings.connect_timeout,
        health_check_interval=settings.health_check_interval,
    )
    return redis.asyncio.Redis.from_pool(pool)


@dataclass(frozen=True)
class ServerInfo:
    """Facts about a Redis server: its version and the modules it loads (name → version)."""

    version: str
    mode: str
    modules: dict[str, int] = field(default_factory=dict)

    def has(self, module: str) -> bool:
        return module in self.modules


async def read_server_info(client: redis.asyncio.Redis, url: str | None = None) -> ServerInfo:
    """Read the server version and loaded modules.

    Servers that refuse ``MODULE LIST`` (some managed services) are probed with
    ``COMMAND INFO`` for one command of each module instead.
    """
    with translate_errors("read server info", url):
        info = await client.info("server")
        modules: dict[str, int] = {}
        try:
            listed = await client.module_list()
        except redis.exceptions.ResponseError:
            listed = None
        if listed is not None:
            by_name = {_text(m[b"name"]): int(m[b"ver"]) for m in listed}
            for ours, (theirs, _) in MODULES.items():
                if theirs in by_name:
                    modules[ours] = by_name[theirs]
        else:
            for ours, (_, command) in MODULES.items():
                if (await execute(client, "COMMAND", "INFO", command))[0]:
                    modules[ours] = 0
    return ServerInfo(
        version=str(info.get("redis_version", "?")),
        mode=str(info.get("redis_mode", "standalone")),
        modules=modules,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def require_modules(info: ServerInfo, modules: list[str], feature: str) -> None:
    """Raise :class:`MissingModuleError` naming the first of *modules* the server lacks."""
    for module in modules:
        if not info.has(module):
            raise MissingModuleError(module, feature)


@dataclass
class Connection:
    """An open connection to the runtime's Redis: client, URL, key builder, embedded server."""

    client: redis.asyncio.Redis
    url: str
    keys: Keys
    embedded: ServerStatus | None = None

    @property
    def started_embedded(self) -> bool:
        """Whether this connection started the embedded server (and stops it on exit)."""
        return self.embedded is not None and not self.embedded.reused


@contextlib.asynccontextmanager
async def open_redis(
    settings: Settings, *, stop_embedded: bool = True
) -> AsyncIterator[Connection]:
    """Connect to ``redis.url``; without one, start (or reuse) the embedded server.

    An embedded server started here is stopped on exit unless *stop_embedded* is false; one
    that was already running is left running. The connection is checked with PING before it
    is handed out.
    """
    embedded: ServerStatus | None = None
    server: EmbeddedRedis | None = None
    url = settings.redis.url
    if url is None:
        server = EmbeddedRedis(settings.redis.embedded)
        embedded = await anyio.to_thread.run_sync(server.start)
        url = embedded.url
    client = create_client(settings.redis, url)
    try:
        with translate_errors("connect", url):
            await client.ping()
        yield Connection(client, url, Keys(settings.redis.key_prefix), embedded)
    finally:
        with contextlib.suppress(redis.exceptions.RedisError):
            await client.aclose()
        if server is not None and embedded is not None and not embedded.reused and stop_embedded:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.stop)
