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
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio
import redis.asyncio.client
import redis.exceptions
from redis.client import NEVER_DECODE

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
    "Connection",
    "ServerInfo",
    "create_client",
    "execute",
    "open_redis",
    "queue_script",
    "read_server_info",
    "require_modules",
    "run_pipeline",
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


async def run_pipeline(
    pipe: Any, *, raise_on_error: bool = True, resend: bool = False
) -> list[Any]:
    """Send the commands queued on a non-transactional pipeline and return their replies,
    as ``pipe.execute(raise_on_error=...)`` does, at a fraction of its cost.

    The commands are packed by hiredis (C) instead of redis-py's per-argument Python, and the
    replies are read off the connection and passed through the client's reply callbacks, so
    callers see the same values. After a connection error the commands may or may not have
    run: with *resend* they are sent again as the client's retry policy says (redis-py's
    default: not at all), for commands that are safe to repeat (fenced scripts, reads);
    without, the error is raised at once, for commands that must not run twice (a submit
    draws a number and adds an entry). Falls back to ``execute()`` (which resends as the
    policy says) for cluster pipelines, transactions, queued ``Script`` objects and arguments
    hiredis does not pack.
    """
    stack = list(pipe.command_stack)
    packed = _packed(pipe, stack)
    if packed is None:
        return list(await pipe.execute(raise_on_error=raise_on_error))
    pool = pipe.connection_pool
    conn = await pool.get_connection()
    replies: list[Any]
    try:
        exchange = functools.partial(_exchange, conn, packed, stack, pipe.response_callbacks)
        if resend:
            # between tries the socket is dropped: the next one connects afresh
            replies = await conn.retry.call_with_retry(exchange, lambda _: conn.disconnect())
        else:
            replies = await exchange()
    except BaseException:
        with anyio.CancelScope(shield=True):  # replies may be left unread: drop the socket
            await conn.disconnect(nowait=True)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await pool.release(conn)
        pipe.command_stack.clear()
    if raise_on_error:
        pipe.raise_first_error(stack, replies)  # the first error, with its command's number
    return replies


async def _exchange(
    conn: Any, packed: bytes, stack: list[Any], callbacks: dict[Any, Any]
) -> list[Any]:
    await conn.send_packed_command(packed)
    raw = await _read_replies(conn, stack)
    replies: list[Any] = []
    for (args, options), reply in zip(stack, raw, strict=True):
        if isinstance(reply, redis.exceptions.ResponseError):
            replies.append(reply)
            continue
        name = args[0]
        if name in callbacks:
            extra = {k: v for k, v in options.items() if k not in _NOT_FOR_CALLBACKS}
            reply = callbacks[name](reply, **extra)
            if inspect.isawaitable(reply):
                reply = await reply
        replies.append(reply)
    return replies


async def _read_replies(conn: Any, stack: list[Any]) -> list[Any]:
    """One reply per command of *stack*, error replies as exception objects: every reply is
    read, errors too, so the socket stays in step.

    The replies are taken from the connection's parser directly, under one timeout for them
    all (redis-py's ``read_response`` sets up a timeout and its error handling for each
    reply); the errors raised are redis-py's own.
    """
    parser: Any = getattr(conn, "_parser", None)
    if not hasattr(parser, "read_response"):  # pragma: no cover - redis-py's parsers have it
        replies: list[Any] = []
        for _, options in stack:
            try:
                replies.append(await conn.read_response(NEVER_DECODE in options))
            except redis.exceptions.ResponseError as exc:
                replies.append(exc)
        return replies
    try:
        async with asyncio.timeout(conn.socket_timeout):
            replies = [
                await parser.read_response(disable_decoding=NEVER_DECODE in options)
                for _, options in stack
            ]
    except TimeoutError:
        await conn.disconnect(nowait=True)
        where = getattr(conn, "host", None) or getattr(conn, "path", "Redis")
        raise redis.exceptions.TimeoutError(f"Timeout reading from {where}") from None
    except OSError as exc:
        await conn.disconnect(nowait=True)
        raise redis.exceptions.ConnectionError(f"Error while reading from Redis: {exc}") from exc
    if conn.health_check_interval:
        conn.next_health_check = asyncio.get_running_loop().time() + conn.health_check_interval
    return replies


def _packed(pipe: Any, stack: list[Any]) -> bytes | None:
    """The commands of *pipe* as one write, or ``None`` where it takes redis-py's path."""
    plain = (
        _pack is not None
        and type(pipe) is redis.asyncio.client.Pipeline  # not a cluster pipeline
        and stack
        and not (pipe.scripts or pipe.is_transaction or pipe.explicit_transaction)
        and not (pipe.watching or pipe.connection)
    )
    if not plain:
        return None
    try:
        return b"".join(_pack(_wire_args(args)) for args, _ in stack)
    except TypeError:  # e.g. a bool or None: redis-py's own path raises its DataError
        return None


# pipeline options redis-py keeps from its reply callbacks
_NOT_FOR_CALLBACKS = frozenset({NEVER_DECODE, "keys"})


def _wire_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Command arguments as Redis reads them: a command name holding a space is two words."""
    first = args[0]
    if isinstance(first, str) and " " in first:
        return (*first.split(), *args[1:])
    return args


async def execute(client: redis.asyncio.Redis, *args: str | bytes | int | float) -> Any:
    """Run a raw command (module commands have no typed wrapper in redis-py)."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def create_client(settings: RedisSettings, url: str) -> redis.asyncio.Redis:
    """An asyncio client for *url* with the pool and timeouts of *settings* (bytes replies)."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=settings.connect_timeout,
        max_connections=settings.max_connections,
        health_check_interval=settings.health_check_interval,
    )


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
