"""Run records and run event streams in Redis.

``<prefix>:{run:<id>}`` (hash) and ``<prefix>:{run:<id>}:events`` (stream) share a hash tag: the
final write of a run (record + terminal event) is one MULTI, so a reader never sees a terminal
event without the result, or the reverse. Both expire ``runs.result_ttl_seconds`` after the last
write; the event stream is trimmed to about ``runs.events_maxlen``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import redis.asyncio

from runtime.agents.protocol import TERMINAL_STATUS, RunEvent, RunRequest, RunResult
from runtime.keys import Keys
from runtime.redis.connection import translate_errors
from runtime.settings.model import RunSettings

__all__ = ["Also", "RunStore"]

Also = Callable[[Any], Awaitable[Any]] | None
"""Adds commands to a pipeline (other keys, same round trip), e.g. a coordination event."""

_encode = msgspec.json.Encoder().encode
_event_decoder = msgspec.json.Decoder(RunEvent)

# KEYS: record. ARGV: ttl, field, value, … → 1 when created, 0 when the record existed.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: record, events. ARGV: ttl, maxlen, worker, now, started event, field, value, …
# → 'done' (already over), 'cancel' (cancelled before it started) or 'ok' (now running).
_BEGIN = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'completed' or status == 'failed' or status == 'cancelled' then return 'done' end
if redis.call('HEXISTS', KEYS[1], 'cancel_requested') == 1 then return 'cancel' end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[3], 'started_at', ARGV[4],
           unpack(ARGV, 6))
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 'ok'
"""

# KEYS: record, events. ARGV: ttl, maxlen, number of field/value pairs n, the n pairs, then
# the events to append (the terminal one last).
_FINISH = """
local n = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 4, 3 + 2 * n))
for i = 4 + 2 * n, #ARGV do
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
    """Reads and writes run records and event streams."""

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
        self, request: RunRequest, inbox: str, envelope: bytes, *, fresh_id: bool = False
    ) -> str | None:
        """Record a submitted run and enqueue it, in one round trip (a pipeline).

        The record is written first, then the work entry, then the ``enqueued`` mark, so a run
        whose record says ``queued`` without the mark was never enqueued. Returns the entry id,
        or ``None`` when a run with this id exists already (nothing is enqueued then). With
        *fresh_id* (a random id made for this run) the existence check is skipped.
        """
        fields: dict[str, Any] = {
            "status": "queued",
            "agent": request.agent,
            "session_id": request.session_id or "",
            "seq": "" if request.seq is None else request.seq,
            "submitted_at": request.submitted_at,
        }
        args: list[Any] = [self._ttl]
        for name, value in fields.items():
            args += [name, value]
        record = self._keys.run(request.run_id)
        with translate_errors("submit a run"):
            if not fresh_id and not await self._create(keys=[record], args=args):
                return None
            async with self._client.pipeline(transaction=False) as pipe:
                if fresh_id:  # a new random id cannot exist: record and enqueue in one trip
                    await self._create(keys=[record], args=args, client=pipe)
                pipe.xadd(inbox, {"envelope": envelope})
                pipe.hset(record, "enqueued", 1)
                replies = await pipe.execute()
        entry_id = replies[-2]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def begin(
        self, request: RunRequest, worker: str, agent: str, attempt: int, *, also: Also = None
    ) -> str:
        """Mark the run running and publish ``run.started``, unless it is over or cancelled.

        Returns ``"ok"``, ``"done"`` (a redelivered entry of a finished run) or ``"cancel"``.
        *also* may add writes of other keys to the same round trip (a pipeline).
        """
        now = time.time()
        started = RunEvent(
            type="run.started", data={"agent": agent, "worker": worker, "attempt": attempt}, at=now
        )
        fields = {
            "agent": request.agent,
            "session_id": request.session_id or "",
            "submitted_at": request.submitted_at or now,
        }
        args: list[Any] = [self._ttl, self._maxlen, worker, now, _encode(started)]
        for name, value in fields.items():
            args += [name, value]
        keys = [self._keys.run(request.run_id), self._keys.run_events(request.run_id)]
        with translate_errors("start a run"):
            async with self._client.pipeline(transaction=False) as pipe:
                await self._begin(keys=keys, args=args, client=pipe)
                if also is not None:
                    await also(pipe)
                state = (await pipe.execute())[0]
        return state.decode() if isinstance(state, bytes) else str(state)

    async def get(self, run_id: str) -> RunResult | None:
        """The run's record, or ``None`` when unknown (or expired)."""
        with translate_errors("read a run"):
            raw: Any = await self._client.hgetall(self._keys.run(run_id))
        if not raw:
            return None
        return _result(run_id, {k.decode(): v.decode() for k, v in raw.items()})

    async def status(self, run_id: str) -> dict[str, str]:
        """The raw status fields of a run (empty when unknown)."""
        with translate_errors("read a run"):
            raw: Any = await self._client.hmget(
                self._keys.run(run_id), ["status", "submitted_at", "enqueued", "cancel_requested"]
            )
        names = ("status", "submitted_at", "enqueued", "cancel_requested")
        return {n: v.decode() for n, v in zip(names, raw, strict=True) if v is not None}

    async def request_cancel(self, run_id: str) -> bool:
        with translate_errors("cancel a run"):
            return bool(await self._cancel(keys=[self._keys.run(run_id)]))

    async def cancel_requested(self, run_id: str) -> bool:
        with translate_errors("read a run"):
            return bool(await self._client.hexists(self._keys.run(run_id), "cancel_requested"))

    # --- events -------------------------------------------------------------------------
    async def emit(self, run_id: str, events: Sequence[RunEvent]) -> None:
        """Append *events* in order (one round trip)."""
        if not events:
            return
        key = self._keys.run_events(run_id)
        with translate_errors("publish run events"):
            async with self._client.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.xadd(key, {"event": _encode(event)}, maxlen=self._maxlen, approximate=True)
                pipe.expire(key, self._ttl)
                await pipe.execute()

    async def finish(
        self, result: RunResult, events: Sequence[RunEvent] = (), *, also: Also = None
    ) -> None:
        """Append *events* and the terminal event (which carries the result), and store the
        result, atomically (one script); *also* may add other writes to the same round trip."""
        event = RunEvent(
            type=f"run.{result.status}", data=msgspec.structs.asdict(result), at=time.time()
        )
        record = self._keys.run(result.run_id)
        stream = self._keys.run_events(result.run_id)
        fields: Any = {
            "status": result.status,
            "final_output": _encode(result.final_output),
            "last_agent": result.last_agent or "",
            "usage": _encode(result.usage),
            "error": result.error or "",
            "error_type": result.error_type or "",
            "worker": result.worker or "",
            "finished_at": result.finished_at or time.time(),
        }
        args: list[Any] = [self._ttl, self._maxlen, len(fields)]
        for name, value in fields.items():
            args += [name, value]
        args += [_encode(earlier) for earlier in events]
        args.append(_encode(event))
        with translate_errors("store a run result"):
            async with self._client.pipeline(transaction=False) as pipe:
                await self._finish(keys=[record, stream], args=args, client=pipe)
                if also is not None:
                    await also(pipe)
                await pipe.execute()

    async def read_events(
        self, run_id: str, after: str = "0-0", *, block_ms: int | None = None, count: int = 500
    ) -> list[RunEvent]:
        """Events after the id *after*, waiting up to *block_ms* for one when there is none."""
        key = self._keys.run_events(run_id)
        with translate_errors("read run events"):
            reply: Any = await self._client.xread({key: after}, count=count, block=block_ms)
        events = []
        for _stream, entries in _items(reply):
            for entry_id, fields in entries:
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
