"""Run records and run event streams in Redis.

``<prefix>:{run:<id>}`` (hash) and ``<prefix>:{run:<id>}:events`` (stream) share a hash tag: the
final write of a run (record + terminal event) is one script, so a reader never sees a terminal
event without the result, or the reverse. Both expire ``runs.result_ttl_seconds`` after the last
write; the event stream is trimmed to about ``runs.events_maxlen``.

Every write a worker makes for a run is safe to send twice (see :mod:`runtime.agents.resend`):
the scripts are fenced by the attempt's token (the record's ``attempt`` field, and the
``written`` mark of the last events written), so a write whose reply was lost and that is
sent again changes nothing, and an attempt is counted once.

A submit with a run id of the app's own is idempotent step by step (see :meth:`RunStore.submit`);
a replayed dead letter puts its run back to ``queued`` once per replay (:meth:`RunStore.requeue`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import redis.asyncio
import redis.exceptions

from runtime.agents.protocol import REQUEUED, TERMINAL_STATUS, RunEvent, RunRequest, RunResult
from runtime.agents.records import decode_events, decode_result, fingerprint
from runtime.agents.resend import send_resending_safe
from runtime.agents.run_scripts import CANCEL, EMIT, ENQUEUE_RUN, FINISH, REQUEUE, SUBMIT_RECORD
from runtime.dlq import REPLAY_HEADER
from runtime.envelope import Envelope
from runtime.errors import RedisError
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.observability.lifecycle import LifecycleEvent, append_lifecycle, recorded_event
from runtime.observability.tracecontext import parse_traceparent
from runtime.redis.connection import (
    Batch,
    first_error,
    queue_script,
    run_batch,
    translate_errors,
)
from runtime.settings.model import RunSettings

__all__ = ["Also", "RunStore", "requeue_for_replay"]

log = get_logger(__name__)

_SUBMIT_RECORD, _ENQUEUE_RUN = SUBMIT_RECORD, ENQUEUE_RUN  # the submit's steps (submit_run.lua)

Also = Callable[[Any], None] | None
"""Queues commands on a pipeline (other keys, same round trip), e.g. a coordination event."""

_encode = msgspec.json.Encoder().encode
_TERMINAL = frozenset(status.encode() for status in TERMINAL_STATUS)
_COUNT = 500  # events per read
_PEEKED = ["status", "cancel_requested"]
_FED = ["status", "agent", "session_id", "worker", "error", "started_at", "finished_at", "trace_id"]


class RunStore:
    """Reads and writes run records and event streams.

    The methods that take a *pipe* only queue their commands on that pipeline, so callers
    put the writes of several keys (a run, its conversation, the coordination stream) in
    one round trip.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: Keys,
        settings: RunSettings,
        *,
        events_maxlen: int = 10_000,
    ) -> None:
        """*events_maxlen*: ``observability.events_maxlen`` (the lifecycle feed's bound)."""
        self._client = client
        self._events_maxlen = events_maxlen
        self._keys = keys
        self._ttl = settings.result_ttl_seconds
        # the guard of a submit outlives the record's first TTL by a run's time limit
        # no longer than the record lasts (it expires with its last write, at the earliest
        # result_ttl after the submit): a retry while the record is there writes nothing
        self._guard_ttl = self._ttl
        self._maxlen = settings.events_maxlen
        self._submit_record = client.register_script(SUBMIT_RECORD)
        self._enqueue_run = client.register_script(ENQUEUE_RUN)
        self._emit = client.register_script(EMIT)
        self._finish = client.register_script(FINISH)
        self._requeue = client.register_script(REQUEUE)
        self._cancel = client.register_script(CANCEL)

    # --- records ------------------------------------------------------------------------
    async def submit(
        self,
        request: RunRequest,
        inbox: str,
        envelope: bytes,
        *,
        fresh_id: bool = False,
        also: Also = None,
        after: Also = None,
        wait_ms: int | None = None,
        trace_id: str | None = None,
    ) -> tuple[str, list[RunEvent]] | None:
        """Record a submitted run and enqueue it, in one round trip (a pipeline), or two when
        the app chose the run's id.

        *also* comes first (the run's number in its conversation), then the record, then the
        work entry, then the ``enqueued`` mark, so a run whose record says ``queued`` without
        the mark was never enqueued; *after* comes last (the submit's span, its lifecycle
        event and its count: not for a submit that went through before). *trace_id* goes
        into the record. Returns the entry id and, with *wait_ms*, the run's first
        events (read in the same round trip, waiting up to *wait_ms* for one; keep it under
        the client's socket timeout), or ``None`` when another run has this id (nothing is
        enqueued then).

        With *fresh_id* (128 random bits made for this run) the record and the entry are
        written as they are. Without, every step is idempotent by run id, so a submit cut off
        anywhere and sent again completes it, and the run is enqueued once: the record is
        created unless it exists, first and alone (another run's id refuses the submit before
        anything else is written), the entry is added through a guard in the inbox's slot
        (``Keys.run_submitted``), and a submit that went through before is recognised (same
        agent, input, session and options) and returns the entry it added. *also* must be
        idempotent too (:meth:`SessionTurns.assign` is).
        """
        record = self._keys.run(request.run_id)
        items: list[Any] = ["status", "queued", "agent", request.agent]
        items += ["session_id", request.session_id or "", "submitted_at", request.submitted_at]
        if trace_id is not None:
            items += ["trace_id", trace_id]
        claimed = 3 if fresh_id else await self._claim_id(record, request, items)
        if not claimed:  # 3: a fresh id, 2: went through before, 1: go on (_claim_id)
            return None
        batch = Batch()
        entry_at = self._queue_submit(batch, request, inbox, envelope, items, claimed, also)
        side = len(batch.commands)  # what comes after is not the submit's: its failure is not
        if claimed != 2 and after is not None:
            after(batch)
        ends = len(batch.commands)
        if wait_ms is not None:
            self._read(batch, request.run_id, "0-0", block_ms=wait_ms, count=_COUNT)
        with translate_errors("submit a run"):
            replies = await run_batch(self._client, batch)
            first_error(replies[:side] + replies[ends:])
        for reply in replies[side:ends]:
            if isinstance(reply, Exception):  # the run is submitted: only its telemetry failed
                log.warning("run.submit_side_write_failed", run=request.run_id, error=str(reply))
        events = decode_events(replies[-1]) if wait_ms is not None else []
        entry_id = replies[entry_at]
        return (entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id or "")), events

    def _queue_submit(
        self, batch: Batch, request: RunRequest, inbox: str, envelope: bytes, items: list[Any],
        claimed: int, also: Also,
    ) -> int:  # fmt: skip
        """Queue a submit's own writes (see :meth:`submit`); the index of the reply that
        holds the entry id."""
        record = self._keys.run(request.run_id)
        guard = self._keys.run_submitted(request.agent, request.run_id)
        if claimed == 2:
            # this very submit went through before (a retry whose first try's reply was
            # lost): nothing is written again, not even where its guard or number expired
            batch.execute_command("GET", guard)
            return 0
        if also is not None:
            also(batch)
        if claimed == 3:  # a new random id cannot exist: no check, no script
            batch.hset(record, items=items)
            batch.expire(record, self._ttl)
            batch.xadd(inbox, {"envelope": envelope})
        else:
            queue_script(batch, self._enqueue_run, [guard, inbox], [envelope, self._guard_ttl])
        entry_at = len(batch.commands) - 1
        batch.hset(record, "enqueued", 1)
        return entry_at

    async def _claim_id(self, record: str, request: RunRequest, items: list[Any]) -> int:
        """Create the record of a run submitted with an id of the app's own, in a round trip
        of its own, before anything else is written: 0 when another run has the id (nothing
        is written then, in its conversation or in any inbox), 2 when this very submit went
        through before, 1 to go on."""
        args = [self._ttl, fingerprint(request), *items]
        with translate_errors("submit a run"):
            return int(await self._submit_record(keys=[record], args=args))

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

    async def requeue(
        self, request: RunRequest, marker: str, *, trace_id: str | None = None
    ) -> str:
        """Put a replayed run back to ``queued`` (its result cleared, a ``run.requeued``
        event after its terminal one), once per replay *marker*; the run's status after.

        Both the replay command and the worker that takes the replayed entry call this, in
        either order: the second finds the marker and changes nothing. A run that completed
        or was cancelled is left as it is (and its replayed entry is only acked). The one
        that puts it back adds ``requeued`` to the lifecycle feed (in a round trip of its
        own: only then is it known).
        """
        event = RunEvent(type=REQUEUED, data={"replay": marker}, at=time.time())
        args: list[Any] = [self._ttl, self._maxlen, marker, _encode(event)]
        args += ["agent", request.agent, "session_id", request.session_id or ""]
        args += ["submitted_at", request.submitted_at]
        keys = [self._keys.run(request.run_id), self._keys.run_events(request.run_id)]
        with translate_errors("requeue a replayed run"):
            done, status = await self._requeue(keys=keys, args=args)
        if done:
            feed = LifecycleEvent(
                run=request.run_id, agent=request.agent, status="requeued",
                session=request.session_id, trace=trace_id,
            )  # fmt: skip
            try:  # best effort: the run is back in the queue whatever the feed says
                async with self._client.pipeline(transaction=False) as pipe:
                    append_lifecycle(pipe, self._keys, self._events_maxlen, feed)
                    await pipe.execute()
            except redis.exceptions.RedisError as exc:
                log.warning("run.feed_write_failed", run=request.run_id, error=str(exc))
        return status.decode() if isinstance(status, bytes) else str(status)

    async def get(self, run_id: str) -> RunResult | None:
        """The run's record, or ``None`` when unknown (or expired)."""
        batch = Batch()
        batch.execute_command("HGETALL", self._keys.run(run_id))
        raw = await self._one("read a run", batch)
        if not raw:
            return None
        if not isinstance(raw, dict):  # RESP2: [field, value, …]
            raw = dict(zip(raw[::2], raw[1::2], strict=True))
        return decode_result(run_id, {k.decode(): v.decode() for k, v in raw.items()})

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
    def emit(
        self,
        pipe: Any,
        request: RunRequest,
        events: Sequence[RunEvent],
        *,
        token: str,
        mark: str,
        worker: str | None = None,
        started_at: float = 0.0,
    ) -> None:
        """Queue the append of *events*, in order, in a script that does it once per *mark*
        (*token*, the attempt's, and the write's number: a write sent again adds nothing).

        With *worker*, the run is marked running too (status, worker, start time, one more
        attempt: once per *token*) unless it is over or a cancel was asked for.
        """
        args: list[Any] = [self._ttl, self._maxlen, f"{token}:{mark}", token]
        if worker is None:
            args.append(0)
        else:
            args += [6, "status", "running", "worker", worker, "started_at", started_at]
            args += ["agent", request.agent, "session_id", request.session_id or ""]
            args += ["submitted_at", request.submitted_at or started_at]
        args += [_encode(event) for event in events]
        keys = [self._keys.run(request.run_id), self._keys.run_events(request.run_id)]
        queue_script(pipe, self._emit, keys, args)

    async def write(self, fill: Callable[[Any], None]) -> list[Any]:
        """Run the commands *fill* queues in one round trip; their replies, errors included
        (a failed command does not stop the others).

        After a connection error or a timeout the write is sent again as the client's retry
        policy says, without the commands that must not run twice (XADDs of coordination
        events: their replies then say they were not sent again); the run's own scripts
        are fenced by the attempt's token and are sent again.
        """
        batch = Batch()
        fill(batch)
        with translate_errors("write a run"):
            return await send_resending_safe(self._client, batch)

    def finish(
        self,
        pipe: Any,
        result: RunResult,
        events: Sequence[RunEvent] = (),
        *,
        count_attempt: bool = False,
        token: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        """Queue the append of *events* and the terminal event (which carries the result)
        and the store of the result, in one script; it writes nothing when the run ended
        already (and says so, unless this attempt's *token* ended it: a write sent again).
        With *count_attempt* the attempt is counted too, unless *token* marked the run
        running already (:meth:`emit`)."""
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
        if trace_id is not None:
            fields["trace_id"] = trace_id
        token = token or os.urandom(8).hex()
        args: list[Any] = [self._ttl, self._maxlen, 1 if count_attempt else 0, token, len(fields)]
        for name, value in fields.items():
            args += [name, value]
        args += [_encode(earlier) for earlier in events]
        args.append(_encode(event))
        keys = [self._keys.run(result.run_id), self._keys.run_events(result.run_id)]
        queue_script(pipe, self._finish, keys, args)

    async def store(self, result: RunResult, *, also: Also = None) -> bool:
        """Store *result* and its terminal event now (*also* queues more in the same round
        trip, e.g. a lifecycle event); ``False`` when the run had ended (a lifecycle event
        queued by *also* then needs :meth:`feed_outcome`)."""

        def fill(pipe: Any) -> None:
            self.finish(pipe, result)
            if also is not None:
                also(pipe)

        reply, *_ = await self.write(fill)
        with translate_errors("store a run result"):
            first_error([reply])
        return bool(reply)

    async def feed_outcome(self, run_id: str) -> None:
        """Append what the run's record says to the lifecycle feed (best effort, two round
        trips): after a write whose result the record refused (the run had ended: another
        attempt's or a dead letter's result stands) but whose own terminal event went to the
        feed in the same round trip (the feed's stream is in another slot than the record,
        so no script can tie them); the feed's latest word on the run is then the record's
        (see :func:`~runtime.observability.lifecycle.recorded_event`)."""
        try:
            with translate_errors("restate a run's outcome in the lifecycle feed"):
                raw: Any = await self._client.hmget(self._keys.run(run_id), _FED)
                record = {n: _text(v) for n, v in zip(_FED, raw, strict=True) if v is not None}
                event = recorded_event(run_id, record)
                if event is None:
                    return
                async with self._client.pipeline(transaction=False) as pipe:
                    append_lifecycle(pipe, self._keys, self._events_maxlen, event)
                    await pipe.execute()
        except RedisError as exc:
            log.warning("run.feed_write_failed", run=run_id, error=str(exc))

    async def read_events(
        self, run_id: str, after: str = "0-0", *, block_ms: int | None = None, count: int = _COUNT
    ) -> list[RunEvent]:
        """Events after the id *after*, waiting up to *block_ms* for one when there is none."""
        batch = Batch()
        self._read(batch, run_id, after, block_ms=block_ms, count=count)
        return decode_events(await self._one("read run events", batch))

    def _read(
        self, batch: Batch, run_id: str, after: str, *, block_ms: int | None, count: int
    ) -> None:
        batch.xread({self._keys.run_events(run_id): after}, count=count, block=block_ms)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def requeue_for_replay(
    client: redis.asyncio.Redis, keys: Keys, settings: RunSettings, envelope: Envelope
) -> bool:
    """Put the run of a replayed dead letter back to ``queued`` (see :meth:`RunStore.requeue`);
    ``False`` when *envelope* is not an agent run's or carries no replay marker, or the run
    is not to run again (it completed, or was cancelled).

    The hook for :meth:`runtime.dlq.DeadLetters.replay`: ``agents-worker dlq replay`` passes
    it. A replay without it still runs the run again (the worker sees the marker), the
    record says ``queued`` only once a worker takes the entry.
    """
    marker = envelope.headers.get(REPLAY_HEADER)
    if marker is None:
        return False
    try:
        request = msgspec.convert(envelope.payload, RunRequest)
    except msgspec.ValidationError:
        return False  # a plain task's letter
    if request.agent != envelope.target:
        return False
    parent = parse_traceparent(envelope.traceparent)
    trace_id = parent.trace_id if parent is not None else None
    status = await RunStore(client, keys, settings).requeue(request, marker, trace_id=trace_id)
    return status == "queued"
