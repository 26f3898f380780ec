"""Run records and run event streams in Redis.

``<prefix>:{run:<id>}`` (hash) and ``<prefix>:{run:<id>}:events`` (stream) share a hash tag: the
final write of a run (record + terminal event) is one MULTI, so a reader never sees a terminal
event without the result, or the reverse. Both expire ``runs.result_ttl_seconds`` after the last
write; the event stream is trimmed to about ``runs.events_maxlen``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import redis.asyncio

from runtime.agents.protocol import TERMINAL_STATUS, RunEvent, RunRequest, RunResult
from runtime.keys import Keys
from runtime.redis.connection import (
    Batch,
    first_error,
    queue_script,
    run_batch,
    translate_errors,
)
from runtime.settings.model import RunSettings

__all__ = ["Also", "RunStore"]

Also = Callable[[Any], None] | None
"""Queues commands on a pipeline (other keys, same round trip), e.g. a coordination event."""

_encode = msgspec.json.Encoder().encode
_event_decoder = msgspec.json.Decoder(RunEvent)
_TERMINAL = frozenset(status.encode() for status in TERMINAL_STATUS)
_COUNT = 500  # events per read
_PEEKED = ["status", "cancel_requested"]

# KEYS: record. ARGV: ttl, field, value, … → 1 when created, 0 when the record existed.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: record. ARGV: ttl, field, value, … (status 'running', worker, started_at, …)
# → 'done' (already over), 'cancel' (a cancel was asked for) or 'ok' (marked running).
_BEGIN = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'completed' or status == 'failed' or status == 'cancelled' then return 'done' end
if redis.call('HEXISTS', KEYS[1], 'cancel_requested') == 1 then return 'cancel' end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 'ok'
"""

# KEYS: record, events. ARGV: ttl, maxlen, count the attempt (1/0: it was never marked running),
# number of field/value pairs n, the n pairs, then the events to append (the terminal one
# last). → 1, or 0 when the run had ended already (another attempt's result stands).
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'completed' or status == 'failed' or status == 'cancelled' then return 0 end
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
local n = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], unpack(ARGV, 5, 4 + 2 * n))
for i = 5 + 2 * n, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""

# KEYS: record. → 1 when a cancel was recorded, 0 when the run is unknown or already over.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'cancelled' then
  return 0
end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
return 1
"""


class RunStore:
    """Reads and writes run records and event streams.

    The methods that take a *pipe* only queue their commands on that pipeline, so callers
    put the writes of several keys (a run, its conversation, the coordination stream) in
    one round trip.
    """

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, settings: RunSettings) -> None:
        self._client = client
        self._keys = keys
        self._ttl = settings.result_ttl_seconds
        self._maxlen = settings.events_maxlen
        self._create = client.register_script(_CREATE)
        self._begin = client.register_script(_BEGIN)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)

    # --- records ------------------------------------------------------------------------
    async def submit(
        self,
        request: RunRequest,
        inbox: str,
        envelope: bytes,
        *,
        fresh_id: bool = False,
        also: Also = None,
        wait_ms: int | None = None,
    ) -> tuple[str, list[RunEvent]] | None:
        """Record a submitted run and enqueue it, in one round trip (a pipeline).

        *also* comes first (the run's number in its conversation), then the record, then the
        work entry, then the ``enqueued`` mark, so a run whose record says ``queued`` without
        the mark was never enqueued. Returns the entry id and, with *wait_ms*, the run's first
        events (read in the same round trip, waiting up to *wait_ms* for one; keep it under
        the client's socket timeout), or ``None`` when a run with this id exists already
        (nothing is enqueued then). With *fresh_id* (128 random bits made for this run) there
        is no existence check; without, it takes a round trip of its own.
        """
        fields: dict[str, Any] = {
            "status": "queued",
            "agent": request.agent,
            "session_id": request.session_id or "",
            "submitted_at": request.submitted_at,
        }
        items = [part for pair in fields.items() for part in pair]
        record = self._keys.run(request.run_id)
        with translate_errors("submit a run"):
            if not fresh_id and not await self._create(keys=[record], args=[self._ttl, *items]):
                return None
            batch = Batch()
            if also is not None:
                also(batch)
            if fresh_id:  # a new random id cannot exist: no check, no script
                batch.hset(record, items=items)
                batch.expire(record, self._ttl)
            batch.xadd(inbox, {"envelope": envelope})
            batch.hset(record, "enqueued", 1)
            if wait_ms is not None:
                self._read(batch, request.run_id, "0-0", block_ms=wait_ms, count=_COUNT)
            replies = await run_batch(self._client, batch)
            first_error(replies)
        events = _events(replies.pop()) if wait_ms is not None else []
        entry_id = replies[-2]
        return (entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)), events

    def peek(self, run_id: str, pipe: Any) -> None:
        """Queue the read of what decides whether an attempt may start (see :meth:`peeked`)."""
        pipe.hmget(self._keys.run(run_id), _PEEKED)

    @staticmethod
    def peeked(reply: Any) -> str:
        """The reply of :meth:`peek`: ``"done"`` (the run is over: a redelivered entry),
        ``"cancel"`` (cancelled before it started) or ``"ok"``."""
        status, cancel = reply
        if (status.encode() if isinstance(status, str) else status) in _TERMINAL:
            return "done"
        return "cancel" if cancel is not None else "ok"

    async def may_start(self, run_id: str) -> str:
        """:meth:`peek` in a round trip of its own (a run without a conversation)."""
        with translate_errors("read a run"):
            reply: Any = await self._client.hmget(self._keys.run(run_id), _PEEKED)
        return self.peeked(reply)

    def begin(self, pipe: Any, request: RunRequest, worker: str, started_at: float) -> None:
        """Queue the mark that the run is running (status, worker, start time, one more
        attempt) unless it is over or a cancel was asked for."""
        args: list[Any] = [self._ttl]
        args += ["status", "running", "worker", worker, "started_at", started_at]
        args += ["agent", request.agent, "session_id", request.session_id or ""]
        args += ["submitted_at", request.submitted_at or started_at]
        queue_script(pipe, self._begin, [self._keys.run(request.run_id)], args)

    async def get(self, run_id: str) -> RunResult | None:
        """The run's record, or ``None`` when unknown (or expired)."""
        batch = Batch()
        batch.execute_command("HGETALL", self._keys.run(run_id))
        raw = await self._one("read a run", batch)
        if not raw:
            return None
        if not isinstance(raw, dict):  # RESP2: [field, value, …]
            raw = dict(zip(raw[::2], raw[1::2], strict=True))
        return _result(run_id, {k.decode(): v.decode() for k, v in raw.items()})

    async def status(self, run_id: str) -> dict[str, str]:
        """The raw status fields of a run (empty when unknown)."""
        names = ("status", "submitted_at", "enqueued", "cancel_requested")
        batch = Batch()
        batch.hmget(self._keys.run(run_id), names)
        raw = await self._one("read a run", batch)
        return {n: v.decode() for n, v in zip(names, raw, strict=True) if v is not None}

    async def _one(self, action: str, batch: Batch) -> Any:
        """The reply to *batch*'s one command as Redis sent it, strings as bytes (whatever
        the client decodes)."""
        with translate_errors(action):
            (reply,) = await run_batch(self._client, batch)
            first_error([reply])
        return reply

    async def request_cancel(self, run_id: str) -> bool:
        with translate_errors("cancel a run"):
            return bool(await self._cancel(keys=[self._keys.run(run_id)]))

    async def cancel_requested(self, run_id: str) -> bool:
        with translate_errors("read a run"):
            return bool(await self._client.hexists(self._keys.run(run_id), "cancel_requested"))

    # --- events ------------------------------------------------------------------------
    def emit(self, pipe: Any, run_id: str, events: Sequence[RunEvent]) -> None:
        """Queue the append of *events*, in order."""
        key = self._keys.run_events(run_id)
        for event in events:
            pipe.xadd(key, {"event": _encode(event)}, maxlen=self._maxlen, approximate=True)
        pipe.expire(key, self._ttl)

    async def write(self, fill: Callable[[Any], None]) -> list[Any]:
        """Run the commands *fill* queues in one round trip; their replies, errors included
        (a failed command does not stop the others)."""
        with translate_errors("write a run"):
            batch = Batch()
            fill(batch)
            return await run_batch(self._client, batch, resend=True)

    def finish(
        self,
        pipe: Any,
        result: RunResult,
        events: Sequence[RunEvent] = (),
        *,
        count_attempt: bool = False,
    ) -> None:
        """Queue the append of *events* and the terminal event (which carries the result)
        and the store of the result, in one script; it writes nothing when the run ended
        already. With *count_attempt* the attempt is counted too (it was never marked running)."""
        event = RunEvent(
            type=f"run.{result.status}", data=msgspec.structs.asdict(result), at=time.time()
        )
        fields: Any = {
            "status": result.status,
            "final_output": _encode(result.final_output),
            "last_agent": result.last_agent or "",
            "usage": _encode(result.usage),
            "error": result.error or "",
            "error_type": result.error_type or "",
            "worker": result.worker or "",
            "agent": result.agent,
            "session_id": result.session_id or "",
            "submitted_at": result.submitted_at,
            "started_at": result.started_at or "",
            "finished_at": result.finished_at or time.time(),
        }
        args: list[Any] = [self._ttl, self._maxlen, 1 if count_attempt else 0, len(fields)]
        for name, value in fields.items():
            args += [name, value]
        args += [_encode(earlier) for earlier in events]
        args.append(_encode(event))
        keys = [self._keys.run(result.run_id), self._keys.run_events(result.run_id)]
        queue_script(pipe, self._finish, keys, args)

    async def store(self, result: RunResult) -> bool:
        """Store *result* and its terminal event now; ``False`` when the run had ended."""
        (reply,) = await self.write(lambda pipe: self.finish(pipe, result))
        with translate_errors("store a run result"):
            first_error([reply])
        return bool(reply)

    async def read_events(
        self, run_id: str, after: str = "0-0", *, block_ms: int | None = None, count: int = _COUNT
    ) -> list[RunEvent]:
        """Events after the id *after*, waiting up to *block_ms* for one when there is none."""
        batch = Batch()
        self._read(batch, run_id, after, block_ms=block_ms, count=count)
        return _events(await self._one("read run events", batch))

    def _read(
        self, batch: Batch, run_id: str, after: str, *, block_ms: int | None, count: int
    ) -> None:
        batch.xread({self._keys.run_events(run_id): after}, count=count, block=block_ms)


def _events(reply: Any) -> list[RunEvent]:
    """Run events from an XREAD reply (in order, each with its stream id): as redis-py
    parses it, or as Redis sent it (an entry's fields then a flat list)."""
    events = []
    for _stream, entries in _items(reply):
        for entry_id, fields in entries:
            if not isinstance(fields, dict):  # as Redis sent them: [field, value, …]
                fields = dict(zip(fields[::2], fields[1::2], strict=True))
            event = _event_decoder.decode(fields[b"event"])
            events.append(msgspec.structs.replace(event, id=entry_id.decode()))
    return events


def _items(reply: Any) -> Any:
    if not reply:
        return ()
    return reply.items() if isinstance(reply, dict) else reply


def _result(run_id: str, raw: dict[str, str]) -> RunResult:
    def number(name: str) -> float | None:
        value = raw.get(name)
        return float(value) if value else None

    status = raw.get("status", "queued")
    return RunResult(
        run_id=run_id,
        status=status if status in (*TERMINAL_STATUS, "queued", "running") else "queued",  # type: ignore[arg-type]
        agent=raw.get("agent", ""),
        session_id=raw.get("session_id") or None,
        final_output=msgspec.json.decode(raw["final_output"]) if raw.get("final_output") else None,
        last_agent=raw.get("last_agent") or None,
        usage=msgspec.json.decode(raw["usage"]) if raw.get("usage") else {},
        error=raw.get("error") or None,
        error_type=raw.get("error_type") or None,
        worker=raw.get("worker") or None,
        submitted_at=number("submitted_at") or 0.0,
        started_at=number("started_at"),
        finished_at=number("finished_at"),
    )
