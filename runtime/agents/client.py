"""The app side of agent runs: submit, follow, wait for, cancel.

async with open_redis(settings) as conn:
    client = AgentClient(conn.client, keys=conn.keys, settings=settings)
    handle = await client.run("triage", "My invoice is wrong", session_id="c-42")
    async for event in handle.events():      # live, in order; resumable with after=
        print(event.type, event.data)
    result = await handle.result(timeout=30)  # blocks on the event stream, no polling
    print(result.final_output)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import redis.asyncio

from runtime.agents.instrument import SubmitTelemetry
from runtime.agents.protocol import REQUEUED, HandoffInfo, RunEvent, RunRequest, RunResult
from runtime.agents.runs import RunStore
from runtime.agents.turns import SessionTurns
from runtime.agents.waiters import BLOCK_MS, COUNT, RunWaiters
from runtime.envelope import new_task_id
from runtime.errors import AgentsWorkerError, EnqueueError, KeyNameError
from runtime.keys import Keys, validate_name
from runtime.producer import Producer
from runtime.settings.model import Settings

__all__ = ["AgentClient", "RunHandle", "RunNotFound"]

_DIRECT_WAITS = 4  # run_and_wait calls at once that wait in their submit's round trip


class RunNotFound(AgentsWorkerError, LookupError):
    """No record of the run: unknown id, or its record expired (``runs.result_ttl_seconds``)."""


class RunHandle:
    """A submitted run: follow its events, wait for its result, cancel it."""

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        agent: str,
        session_id: str | None,
        *,
        waiters: RunWaiters,
    ) -> None:
        self._store = store
        self._waiters = waiters
        self.run_id = run_id
        self.agent = agent
        self.session_id = session_id

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r}, agent={self.agent!r})"

    async def status(self) -> RunResult | None:
        """The run's record now (``None`` when unknown)."""
        return await self._store.get(self.run_id)

    async def result(self, timeout: float | None = None) -> RunResult:  # noqa: ASYNC109
        """Wait for the run to end and return its result.

        Blocks on the run's event stream, so it returns as soon as the terminal event is
        written; all the waits of one :class:`AgentClient` share one blocked read (one
        connection, however many runs are awaited). A failed or cancelled run is returned,
        not raised: check ``result.status`` / ``result.error``. A run that was dead-lettered
        and then replayed (``agents-worker dlq replay``) runs again: its outcome is the new
        attempt's.

        Raises:
            TimeoutError: the run did not end within *timeout* seconds.
            RunNotFound: the run is unknown.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        return await self._result(deadline, timeout)

    async def _result(
        self,
        deadline: float | None,
        limit: float | None,
        after: str = "0-0",
        ended: RunEvent | None = None,
        more: bool = False,
    ) -> RunResult:
        # from "0-0": a finished run's terminal event is already there, found at once
        while ended is None or more:
            within = BLOCK_MS / 1000
            if deadline is not None:
                within = min(within, deadline - time.monotonic())
                if within <= 0:
                    raise await self._timed_out(limit)
            events, more = await self._next(after, more, within)
            ended = _ending(events, ended)
            if events:
                after = events[-1].id or after
            elif ended is None and await self._store.get(self.run_id) is None:
                raise RunNotFound(f"run {self.run_id!r} disappeared (its record expired)")
        return msgspec.convert(ended.data, RunResult)

    async def _timed_out(self, limit: float | None) -> TimeoutError:
        status = await self._store.get(self.run_id)
        return TimeoutError(
            f"run {self.run_id} of {self.agent!r} did not end within {limit:g} s "
            f"(status: {status.status if status else 'gone'}; is a worker serving "
            f"{self.agent!r}?)"
        )

    async def _next(
        self, after: str, more: bool, within: float | None
    ) -> tuple[list[RunEvent], bool]:
        """The next events after *after*: read at once when *more* are there already (or
        *within* is ``None``), else waited for through the client's one reader."""
        if more or within is None:
            events = await self._store.read_events(self.run_id, after, count=COUNT)
            return events, len(events) >= COUNT
        return await self._waiters.next(self.run_id, after, within=within)

    async def events(self, after: str = "0-0", *, follow: bool = True) -> AsyncIterator[RunEvent]:
        """The run's events in order, from just after the event id *after*.

        With *follow* it waits for new events until the run ends (its terminal event, unless
        a ``run.requeued`` event follows it: then the replayed run's events come too); pass
        the ``id`` of the last event seen as *after* to resume after a disconnect: nothing is
        repeated or missed.
        """
        ended: RunEvent | None = None
        more = False
        while True:
            events, more = await self._next(after, more, BLOCK_MS / 1000 if follow else None)
            for event in events:
                yield event
                after = event.id or after
            ended = _ending(events, ended)
            if ended is not None and not more:
                return
            if not events:
                if not follow:
                    return
                if await self._store.get(self.run_id) is None:
                    raise RunNotFound(f"no run {self.run_id!r} (unknown, or its record expired)")

    async def cancel(self) -> bool:
        """Ask for the run to stop; ``False`` when it already ended. The result says when."""
        return await self._store.request_cancel(self.run_id)


class AgentClient:
    """Submit agent runs and hand conversations over between agents."""

    def __init__(self, client: redis.asyncio.Redis, *, keys: Keys, settings: Settings) -> None:
        self._client = client
        self._keys = keys
        self._settings = settings
        self._runs = RunStore(
            client, keys, settings.runs, events_maxlen=settings.observability.events_maxlen
        )
        self._turns = SessionTurns(client, keys, lease_seconds=settings.worker.lease_seconds)
        self._producer = Producer(client, keys=keys, settings=settings)
        self._waiters = RunWaiters(client, keys, self._runs)
        self._telemetry = SubmitTelemetry(keys, settings)
        # waits in a submit's round trip hold a connection each: a few at once, the rest
        # wait through the shared reader
        pool = getattr(client, "connection_pool", None)  # a cluster client has none
        pool_size = getattr(pool, "max_connections", 0) or 0
        self._direct_left = min(_DIRECT_WAITS, pool_size // 8)

    def handle(self, run_id: str, agent: str = "", session_id: str | None = None) -> RunHandle:
        """A handle on a run submitted earlier (by this process or another)."""
        return RunHandle(self._runs, run_id, agent, session_id, waiters=self._waiters)

    async def run(
        self,
        agent: str,
        input: str | list[dict[str, Any]],
        *,
        session_id: str | None = None,
        context: dict[str, Any] | None = None,
        max_turns: int | None = None,
        run_id: str | None = None,
        stream: bool | None = None,
    ) -> RunHandle:
        """Submit a run of *agent* on *input*; runs of one *session_id* execute in submit order.

        With *stream* the worker publishes text deltas (``message.delta`` events) as the model
        writes; by default ``runs.stream_deltas`` decides.

        Raises:
            EnqueueError: bad agent name, session id or run id, or input that is not JSON.
        """
        handle, _ = await self._submit(
            agent, input, session_id=session_id, context=context, max_turns=max_turns,
            run_id=run_id, handoff=None, stream=stream,
        )  # fmt: skip
        return handle

    async def run_and_wait(
        self,
        agent: str,
        input: str | list[dict[str, Any]],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        session_id: str | None = None,
        context: dict[str, Any] | None = None,
        max_turns: int | None = None,
        run_id: str | None = None,
    ) -> RunResult:
        """Submit a run and wait for its result: :meth:`run` then :meth:`RunHandle.result`,
        with the submit and the first wait in one round trip (a quick run costs the app a
        single one).

        Raises:
            EnqueueError: as :meth:`run`.
            TimeoutError: the run did not end within *timeout* seconds (it goes on; its id
                is in the message, :meth:`handle` gets it back).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        first = BLOCK_MS if timeout is None else max(1, min(BLOCK_MS, int(timeout * 1000)))
        direct = self._direct_left > 0
        self._direct_left -= direct
        try:
            handle, events = await self._submit(
                agent, input, session_id=session_id, context=context, max_turns=max_turns,
                run_id=run_id, handoff=None, stream=None, wait_ms=first if direct else None,
            )  # fmt: skip
        finally:
            self._direct_left += direct
        after = (events[-1].id or "0-0") if events else "0-0"
        ended, more = _ending(events, None), len(events) >= COUNT
        return await handle._result(deadline, timeout, after, ended, more)

    async def handoff(
        self,
        to_agent: str,
        *,
        session_id: str,
        from_agent: str,
        context: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> RunHandle:
        """Continue *session_id* with *to_agent*, telling it who handed over and why."""
        info = HandoffInfo(from_agent=from_agent, context=context or {}, event_id=event_id)
        handle, _ = await self._submit(
            to_agent, None, session_id=session_id, context=context, max_turns=None,
            run_id=None, handoff=info, stream=None,
        )  # fmt: skip
        return handle

    async def _submit(
        self,
        agent: str,
        input: str | list[dict[str, Any]] | None,
        *,
        session_id: str | None,
        context: dict[str, Any] | None,
        max_turns: int | None,
        run_id: str | None,
        handoff: HandoffInfo | None,
        stream: bool | None,
        wait_ms: int | None = None,
    ) -> tuple[RunHandle, list[RunEvent]]:
        start = time.time()
        fresh_id = run_id is None
        run_id = run_id or new_task_id()
        try:
            validate_name("agent", agent)
            validate_name("run", run_id)
            if session_id is not None:
                validate_name("session", session_id)
        except KeyNameError as exc:
            raise EnqueueError(str(exc)) from None
        request = RunRequest(
            run_id=run_id,
            agent=agent,
            input=input,
            session_id=session_id,
            context=context or {},
            max_turns=max_turns,
            handoff=handoff,
            stream=stream,
            submitted_at=start,
        )
        # the run's trace: the caller's, else its own; its submit span, its 'queued' event
        # and its count go in the submit's round trip (runtime.agents.instrument)
        traceparent, trace_id, after = self._telemetry.prepare(request, start)
        _, envelope = self._producer.build(agent, request, task_id=run_id, traceparent=traceparent)
        inbox = self._keys.inbox(agent)
        turns, sid = self._turns, session_id
        # the run's number in its conversation is drawn in the same round trip
        also = None if sid is None else (lambda pipe: turns.assign(pipe, sid, run_id))
        submitted = await self._runs.submit(
            request, inbox, envelope, fresh_id=fresh_id, also=also, after=after,
            wait_ms=wait_ms, trace_id=trace_id,
        )  # fmt: skip
        if submitted is None:
            raise EnqueueError(f"a run with id {run_id!r} exists already")
        handle = RunHandle(self._runs, run_id, agent, session_id, waiters=self._waiters)
        return handle, submitted[1]


def _ending(events: list[RunEvent], ended: RunEvent | None) -> RunEvent | None:
    """The terminal event that ends the run as far as *events* (read after *ended*'s
    batch) show: the last terminal one, unless a ``run.requeued`` event comes after it."""
    for event in events:
        if event.terminal:
            ended = event
        elif event.type == REQUEUED:  # a replay: a new attempt follows
            ended = None
    return ended
