"""The app a worker runs: named handlers (targets), each fed by its own inbox stream.

    app = App("shop")

    @app.task("send_receipt", timeout=30)
    async def send_receipt(ctx: TaskContext, order: Order) -> None:
        ...

    # agents-worker run shop.workers:app

A handler takes the task context and the payload; when the payload parameter is annotated
with a :class:`msgspec.Struct` (or any msgspec-convertible type), the JSON payload is
converted to it and an invalid payload is dead-lettered without a retry. Plain ``def``
handlers run in a thread so they cannot stall the event loop (and with it lease renewal).

Timeouts (``timeout=``, else ``worker.task_timeout_seconds``; capped by the entry's deadline):
an ``async def`` handler is cancelled at its next ``await`` when its time is up. A plain
``def`` handler's thread cannot be stopped: the timeout does not interrupt it. Its entry then
stays with this worker — lease renewed, slot busy — until the thread has returned, so that no
other try of the entry starts while it still runs; the attempt then counts as timed out
(retried, or dead-lettered after ``worker.max_deliveries``). Only shutdown does not wait for
such a thread beyond the grace period: the entry is released and the thread ends with the
process. A plain handler that must stop in time keeps its own time (and checks
``ctx.deadline``, when set). A blocking call in an ``async def`` handler is worse: it blocks
the whole loop (every other entry, lease renewal); the worker then renews at once when the
loop wakes and never starts a second copy of an entry it still holds, but if the loop stays
blocked past the lease another worker may take the entry meanwhile.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

from runtime.errors import AppError
from runtime.keys import validate_name

if TYPE_CHECKING:
    import redis.asyncio

    from runtime.envelope import Envelope
    from runtime.keys import Keys
    from runtime.observability.telemetry import Telemetry
    from runtime.observability.tracecontext import TraceParent
    from runtime.settings.model import Settings

__all__ = ["App", "DeadLetterContext", "Handler", "TaskContext", "load_app"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler knows about the entry it runs.

    Its time limit: an ``async def`` handler is cancelled at its next ``await``; a plain
    ``def`` handler's thread runs on past it (Python cannot stop a thread), its entry held
    until the thread returns. A sync handler that must stop in time keeps its own time (and
    checks ``deadline``, when set).
    """

    task_id: str
    target: str
    attempt: int
    """Failed attempts before this one (0 on the first try)."""
    deliveries: int
    """Times this stream entry was delivered (above 1 after a worker died running it)."""
    entry_id: str
    created_at: float
    deadline: float | None
    headers: dict[str, str]
    traceparent: str | None
    consumer: str
    redis: redis.asyncio.Redis
    keys: Keys
    settings: Settings
    queue_ack: Callable[[Any], bool] | None = field(default=None, repr=False, compare=False)
    """Set by the worker: see :meth:`ack_in`."""
    telemetry: Telemetry | None = field(default=None, repr=False, compare=False)
    """The worker process's recorders (traces, metrics), ``None`` when both are off in the
    settings: a handler records spans and samples of its own through them (no I/O)."""
    trace: TraceParent | None = None
    """The context of this attempt's span (``observability.tracing``; else ``None``): the
    parent of the spans the handler records (an agent run's SDK spans are its children)."""

    def ack_in(self, pipe: Any) -> bool:
        """Queue the ack of this entry on *pipe*: a pipeline the handler runs as its last
        write, so its outcome and the ack share one round trip.

        If the handler then returns, the worker does not ack the entry again; if it raises,
        the failure is handled as usual (an ack that did not happen leaves the entry
        pending). The ack is queued as a script that Redis refuses whenever it refuses the
        writes before it (out of memory, read-only, busy): an outcome refused there leaves the
        entry pending. An outcome that fails for another reason (a wrong key type, a script
        error) does not stop the ack: use a transaction (``pipeline(transaction=True)``) to
        tie them. Returns ``False`` (nothing queued:
        the worker acks after the handler returns) when the worker does not offer this or the
        entry's lease was lost.
        """
        return self.queue_ack(pipe) if self.queue_ack is not None else False


@dataclass(frozen=True, slots=True)
class DeadLetterContext:
    """What an ``on_dead_letter`` hook learns about an entry that was just dead-lettered."""

    envelope: Envelope
    reason: str
    """A bare code (:class:`runtime.envelope.Reason`): ``failed``, ``permanent``, ``expired``…"""
    error: str | None
    redis: redis.asyncio.Redis
    keys: Keys
    settings: Settings
    detail: str = ""
    """What happened, in words (e.g. ``failed 5 times (worker.max_deliveries = 5)``)."""
    telemetry: Telemetry | None = None
    """The worker process's recorders, as :attr:`TaskContext.telemetry`."""


@dataclass(frozen=True)
class Handler:
    """A registered target.

    ``timeout`` (seconds) cancels an ``async def`` handler at its next ``await``; it cannot
    stop a plain ``def`` handler's thread, whose entry is held (lease renewed, slot busy)
    until the thread returns and only then settled as timed out (see the module's docstring).
    """

    name: str
    fn: Callable[..., Any]
    timeout: float | None = None
    payload_type: Any = Any
    is_async: bool = True
    on_dead_letter: Callable[[DeadLetterContext], Awaitable[None]] | None = None
    """Called (best effort) after an entry of this target was dead-lettered."""
    ends_trace: bool = False
    """The handler ends its task's trace itself (an agent run: the trace's status is the
    run's); otherwise the worker ends it when the handler returns."""


@dataclass
class App:
    """A set of handlers served together by the same worker processes."""

    name: str = "app"
    handlers: dict[str, Handler] = field(default_factory=dict)

    def task(self, name: str | None = None, *, timeout: float | None = None) -> Callable[[F], F]:
        """Register the decorated function as the handler of target *name* (default: its name)."""

        def register(fn: F) -> F:
            self.add_handler(name or fn.__name__, fn, timeout=timeout)
            return fn

        return register

    def add_handler(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        timeout: float | None = None,
        on_dead_letter: Callable[[DeadLetterContext], Awaitable[None]] | None = None,
        ends_trace: bool = False,
    ) -> None:
        """Register *fn* as the handler of target *name* (*ends_trace*: see
        :attr:`Handler.ends_trace`)."""
        validate_name("target", name)
        if name in self.handlers:
            raise AppError(f"target {name!r} is registered twice in app {self.name!r}")
        if timeout is not None and timeout <= 0:
            raise AppError(f"timeout of target {name!r} must be positive, not {timeout}")
        params = list(inspect.signature(fn).parameters.values())
        if len(params) != 2:
            raise AppError(
                f"handler {name!r} must take (ctx, payload), not {len(params)} arguments"
            )
        try:
            hints = get_type_hints(fn)
        except Exception:  # unresolvable annotations: treat the payload as plain JSON
            hints = {}
        self.handlers[name] = Handler(
            name=name,
            fn=fn,
            timeout=timeout,
            payload_type=hints.get(params[1].name, Any),
            is_async=inspect.iscoroutinefunction(fn),
            on_dead_letter=on_dead_letter,
            ends_trace=ends_trace,
        )

    @property
    def targets(self) -> list[str]:
        return sorted(self.handlers)


def load_app(spec: str) -> App:
    """Import ``module:object`` and return the :class:`App` it names.

    Raises:
        AppError: the module cannot be imported, the object is missing or is not an App.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppError(f"app {spec!r} must be given as module:object, e.g. workers.demo:app")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppError(f"cannot import {module_name!r} for app {spec!r}: {exc}") from exc
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise AppError(f"module {module_name!r} has no {attr!r} (app {spec!r})") from None
    if callable(app) and not isinstance(app, App):
        app = app()  # a factory
    if not isinstance(app, App):
        raise AppError(f"{spec!r} is a {type(app).__name__}, not a runtime.App")
    if not app.handlers:
        raise AppError(f"app {spec!r} registers no handler")
    return app
