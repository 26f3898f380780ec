"""The app side: put work on a target's inbox stream.

    producer = Producer(conn.client, keys=conn.keys, settings=settings)
    sent = await producer.enqueue("send_receipt", {"order": 17}, idempotency_key="order-17")
    later = await producer.enqueue("reminder", {"user": 3}, delay=3600)

An idempotency key makes duplicate enqueues within ``streams.idempotency_window_seconds`` return
the first task, atomically with the XADD (one Lua script). A delay or run-at time parks the
envelope in the inbox's delayed set; workers move it into the stream when it is due.

Times that cross processes are Redis's: a ``delay`` is sent as such, and the script adds it to
Redis's clock (``TIME``), so a producer whose clock is off still delays by the time asked;
``run_at`` is an absolute Unix time the caller chose and is kept as given (compared with
Redis's clock). An envelope over ``streams.max_entry_bytes`` is refused here
(:class:`~runtime.errors.EnqueueError`), before anything is sent.

Tracing: an envelope of :meth:`enqueue` carries a W3C ``traceparent``: the caller's
(``traceparent=``, else the active OpenTelemetry span's), else one of the task's own trace.
With ``observability.tracing``, :meth:`enqueue` records a ``submit <target>`` span (a child of
the caller's span) in the enqueue's own round trip, and the envelope carries that span's
context: the worker records the task's spans as its children. :meth:`enqueue_many` (bulk
work) records no span, and its envelopes carry the active OpenTelemetry span's context only:
outside one, its tasks are not traced (they are counted in the metrics all the same).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.asyncio

from runtime.envelope import Envelope, encode_envelope, new_task_id
from runtime.errors import EnqueueError, KeyNameError
from runtime.keys import Keys, validate_name
from runtime.observability.spans import SpanRecord
from runtime.observability.telemetry import (
    app_bridge,
    new_traceparent,
    queue_span,
    submit_span,
)
from runtime.observability.tracecontext import current_traceparent
from runtime.redis.connection import Batch, first_error, queue_script, run_batch, translate_errors
from runtime.scripts import Scripts
from runtime.settings.model import Settings

__all__ = ["Enqueued", "Producer"]


@dataclass(frozen=True)
class Enqueued:
    """The outcome of one enqueue."""

    task_id: str
    entry_id: str | None
    """Stream entry id; ``None`` when the task was delayed or was a duplicate."""
    duplicate: bool = False
    """True when the idempotency key was seen: ``task_id`` is the first task's id."""
    run_at: float | None = None
    """Unix time (Redis's clock) from which a delayed task may run; ``None`` when it was
    enqueued to run at once (or was a duplicate)."""


class Producer:
    """Enqueue work for targets served by workers (async, safe to share between tasks)."""

    def __init__(self, client: redis.asyncio.Redis, *, keys: Keys, settings: Settings) -> None:
        self._client = client
        self._keys = keys
        self._streams = settings.streams
        self._settings = settings
        self._scripts = Scripts.register(client)
        self._tracing = settings.observability.tracing
        self._trace_ttl_ms = max(1, int(settings.runs.result_ttl_seconds * 1000))

    def build(
        self,
        target: str,
        payload: Any = None,
        *,
        task_id: str | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
        traceparent: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Envelope, bytes]:
        """Validate and encode one envelope (raises :class:`EnqueueError`)."""
        try:
            validate_name("target", target)
            if idempotency_key is not None:
                validate_name("idempotency key", idempotency_key)
            if task_id is not None:
                validate_name("task id", task_id)
        except KeyNameError as exc:
            raise EnqueueError(str(exc)) from None
        if deadline is not None and deadline <= time.time():
            raise EnqueueError(f"deadline {deadline} is already past")
        envelope = Envelope(
            id=task_id or new_task_id(),
            target=target,
            payload=payload,
            created_at=time.time(),
            deadline=deadline,
            idempotency_key=idempotency_key,
            traceparent=traceparent,
            headers=dict(headers or {}),
        )
        try:
            raw = encode_envelope(envelope)
        except (TypeError, msgspec.EncodeError) as exc:
            raise EnqueueError(f"payload for {target!r} is not JSON-serialisable: {exc}") from None
        if len(raw) > self._streams.max_entry_bytes:
            raise EnqueueError(
                f"entry for {target!r} is {len(raw)} bytes, over streams.max_entry_bytes "
                f"({self._streams.max_entry_bytes})"
            )
        return envelope, raw

    async def enqueue(
        self,
        target: str,
        payload: Any = None,
        *,
        task_id: str | None = None,
        idempotency_key: str | None = None,
        delay: float | None = None,
        run_at: float | None = None,
        deadline: float | None = None,
        traceparent: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Enqueued:
        """Enqueue one task for *target*.

        Args:
            delay: seconds from now before it may run (exclusive with *run_at*).
            run_at: Unix time before which it does not run.
            deadline: Unix time after which it is not started any more (dead-lettered).
            traceparent: the W3C context of the caller's span (default: the active
                OpenTelemetry span's, if any).

        Raises:
            EnqueueError: bad target or key, payload not JSON, entry too large, bad times.
            RedisError: Redis failed.
        """
        start = time.time()
        when = self._when(delay, run_at)
        task_id = task_id or new_task_id()
        span, traceparent = self._trace(target, task_id, traceparent, start)
        envelope, raw = self.build(
            target,
            payload,
            task_id=task_id,
            idempotency_key=idempotency_key,
            deadline=deadline,
            traceparent=traceparent,
            headers=headers,
        )
        with translate_errors(f"enqueue to {target!r}"):
            if idempotency_key is not None or when is not None:
                return await self._enqueue_script(envelope, raw, when, span)
            if span is None:
                entry_id = await self._client.xadd(self._keys.inbox(target), {"envelope": raw})
            else:
                batch = Batch()
                batch.xadd(self._keys.inbox(target), {"envelope": raw})
                entry_id = await self._send(batch, span)
        return Enqueued(envelope.id, _text(entry_id))

    def _trace(
        self, target: str, task_id: str, traceparent: str | None, start: float
    ) -> tuple[SpanRecord | None, str]:
        """The submit span (with tracing on) and the traceparent the envelope carries."""
        traceparent = traceparent or current_traceparent()
        if not self._tracing:
            return None, new_traceparent(traceparent, task_id)
        attrs = {"target": target, "task_id": task_id}
        span, traceparent = submit_span(
            target, traceparent, task_id=task_id, start=start, attrs=attrs
        )
        if (bridge := app_bridge(self._settings)) is not None:
            bridge.export(span)  # the app's side of the trace, in its own OpenTelemetry
        return span, traceparent

    async def _send(self, batch: Batch, span: SpanRecord) -> Any:
        """Send *batch* (one command) with the write of *span*; the command's reply."""
        queue_span(batch, self._keys, span, self._trace_ttl_ms)
        replies = await run_batch(self._client, batch)
        first_error(replies[:1])
        return replies[0]

    async def enqueue_many(self, target: str, payloads: Iterable[Any]) -> list[Enqueued]:
        """Enqueue one task per payload in one pipelined round trip."""
        # bulk work is traced only inside a caller's span (tracing costs each task spans)
        parent = current_traceparent()
        built = [self.build(target, payload, traceparent=parent) for payload in payloads]
        inbox = self._keys.inbox(target)
        with translate_errors(f"enqueue to {target!r}"):
            async with self._client.pipeline(transaction=False) as pipe:
                for _, raw in built:
                    pipe.xadd(inbox, {"envelope": raw})
                ids = await pipe.execute()
        return [Enqueued(env.id, _text(i)) for (env, _), i in zip(built, ids, strict=True)]

    @staticmethod
    def _when(delay: float | None, run_at: float | None) -> tuple[str, int] | None:
        """``("in", ms)`` for a delay, ``("at", ms since the epoch)`` for a run-at time,
        ``None`` for at once: the script reads them against Redis's clock."""
        if delay is not None and run_at is not None:
            raise EnqueueError("give either delay or run_at, not both")
        if delay is not None:
            if not delay >= 0:  # NaN too
                raise EnqueueError(f"delay must be >= 0, not {delay}")
            return ("in", int(delay * 1000)) if delay > 0 else None
        if run_at is not None:
            if not run_at >= 0:
                raise EnqueueError(f"run_at must be a Unix time >= 0, not {run_at}")
            return ("at", int(run_at * 1000))
        return None

    async def _enqueue_script(
        self, envelope: Envelope, raw: bytes, when: tuple[str, int] | None, span: SpanRecord | None
    ) -> Enqueued:
        """A delayed and/or idempotent enqueue: one script, times read against Redis's clock."""
        keys = [self._keys.inbox(envelope.target), self._keys.delayed(envelope.target)]
        if envelope.idempotency_key is not None:
            keys.append(self._keys.idempotency(envelope.target, envelope.idempotency_key))
        window_ms = int(self._streams.idempotency_window_seconds * 1000)
        mode, ms = when or ("at", 0)
        args = [raw, envelope.id, window_ms, mode, ms]
        if span is None:
            reply = await self._scripts.enqueue(keys=keys, args=args)
        else:
            batch = Batch()
            queue_script(batch, self._scripts.enqueue, keys, args)
            reply = await self._send(batch, span)
        if not reply[0]:
            return Enqueued(_text(reply[1]), None, duplicate=True)
        run_at_ms = int(reply[2])
        return Enqueued(
            envelope.id, _text(reply[1]) or None, run_at=run_at_ms / 1000 if run_at_ms else None
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
