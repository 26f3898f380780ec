"""Every Redis key the runtime uses is built here, and nowhere else.

Keys are ``<prefix>:<…>``. What one atomic step touches shares a Redis Cluster hash tag
(``{…}``), so it lands in one slot: an inbox with its delayed set, dead-letter stream and
idempotency keys; a run with its event stream and journal; a session with its items and lease;
a metric series with its roll-up.

==========================================  ======  ==========================================
key                                         type    lifetime
==========================================  ======  ==========================================
``aw:{inbox:<agent>}``                      stream  entries deleted on ack
``aw:{inbox:<agent>}:delayed``              zset    members moved to the inbox when due
``aw:{inbox:<agent>}:dlq``                  stream  trimmed to a MAXLEN setting
``aw:{inbox:<agent>}:idem:<key>``           string  TTL = the idempotency window
``aw:{inbox:<agent>}:submitted:<run>``      string  TTL = result retention
``aw:{run:<id>}``                           hash    TTL = result retention
``aw:{run:<id>}:events``                    stream  TTL = result retention, MAXLEN ~
``aw:{run:<id>}:journal``                   hash    TTL = result retention
``aw:waiters:<client id>``                  stream  wakes an AgentClient's run reader; TTL 60 s
``aw:{session:<id>}``                       hash    TTL = session TTL when set
``aw:{session:<id>}:items``                 list    TTL = session TTL when set
``aw:{session:<id>}:lease``                 string  TTL = lease, renewed while a run holds it
``aw:{session:<id>}:doc``                   JSON    the RedisJSON session; TTL when set
``aw:{session:<id>}:turns``                 hash    run order of the conversation (seq, next)
``aw:{coord:<name>}:<event type>``          stream  coordination events, MAXLEN ~
``aw:events``                               stream  run lifecycle events, MAXLEN ~
``aw:traces``                               stream  recent traces (one entry per trace), MAXLEN ~
``aw:{trace:<trace id>}``                   hash    TTL = result retention (trace summary)
``aw:{trace:<trace id>}:spans``             hash    TTL = result retention (span id → JSON)
``aw:ts:{<metric>:<series>}``               TS      TTL = metrics retention, refreshed
``aw:ts:{<metric>:<series>}:rollup``        TS      TTL = roll-up retention, refreshed
``aw:metrics:totals``                       hash    bounded by metrics × label sets
``aw:targets``                              zset    targets served (score: last seen)
``aw:fleet``                                zset    supervisors (score: last heartbeat)
``aw:fleet:<instance>``                     hash    one supervisor's workers; TTL 3 beats
==========================================  ======  ==========================================
"""

from __future__ import annotations

import re

from runtime.errors import KeyNameError

__all__ = ["Keys", "hash_tag", "validate_name", "validate_prefix"]

# Names may not contain braces (they would end the hash tag early), whitespace, control
# characters or the ':' separator; they are at most 200 characters.
_NAME = re.compile(r"[^\s{}:\x00-\x1f\x7f]{1,200}")
_PREFIX = re.compile(r"[A-Za-z0-9_.\-]+(:[A-Za-z0-9_.\-]+)*")


def validate_prefix(prefix: str) -> str:
    """Return *prefix* if it can start every key, else raise :class:`KeyNameError`."""
    if not _PREFIX.fullmatch(prefix):
        raise KeyNameError(
            f"key prefix {prefix!r} may hold only letters, digits, '_', '.', '-' and inner ':'"
        )
    return prefix


def validate_name(kind: str, name: str) -> str:
    """Return *name* if it can be part of a key, else raise :class:`KeyNameError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise KeyNameError(
            f"{kind} name {name!r} must be 1-200 characters without whitespace, ':', '{{' or '}}'"
        )
    return name


def hash_tag(key: str) -> str:
    """The part of *key* Redis Cluster hashes (the first ``{…}``, else the whole key)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


class Keys:
    """Builds the Redis keys of one deployment.

    >>> keys = Keys("aw")
    >>> keys.inbox("triage")
    'aw:{inbox:triage}'
    >>> keys.run_events("r1")
    'aw:{run:r1}:events'
    """

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "aw") -> None:
        self.prefix = validate_prefix(prefix)

    def __repr__(self) -> str:
        return f"Keys({self.prefix!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keys) and other.prefix == self.prefix

    def __hash__(self) -> int:
        return hash(self.prefix)

    # --- work streams -------------------------------------------------------------------
    def inbox(self, agent: str, partition: int | None = None) -> str:
        """The work stream of *agent* (or of one partition of a hot agent)."""
        validate_name("agent", agent)
        if partition is None:
            return f"{self.prefix}:{{inbox:{agent}}}"
        if partition < 0:
            raise KeyNameError(f"partition must be >= 0, not {partition}")
        return f"{self.prefix}:{{inbox:{agent}:{partition}}}"

    def delayed(self, agent: str, partition: int | None = None) -> str:
        """Entries of *agent* waiting for their run-at time (retries, delayed enqueues)."""
        return self.inbox(agent, partition) + ":delayed"

    def dlq(self, agent: str, partition: int | None = None) -> str:
        """The dead-letter stream of *agent*."""
        return self.inbox(agent, partition) + ":dlq"

    def idempotency(self, agent: str, key: str, partition: int | None = None) -> str:
        """Remembers the entry id enqueued under an idempotency *key*."""
        return self.inbox(agent, partition) + ":idem:" + validate_name("idempotency key", key)

    def run_submitted(self, agent: str, run_id: str) -> str:
        """Guards the enqueue of a run submitted with its own id: one work entry per run id."""
        return self.inbox(agent) + ":submitted:" + validate_name("run", run_id)

    # --- runs ---------------------------------------------------------------------------
    def run(self, run_id: str) -> str:
        """The record (status, result, error) of one run."""
        return f"{self.prefix}:{{run:{validate_name('run', run_id)}}}"

    def run_events(self, run_id: str) -> str:
        """The resumable event stream of one run."""
        return self.run(run_id) + ":events"

    def run_journal(self, run_id: str) -> str:
        """Journaled model responses and tool outputs of one run, replayed on redelivery."""
        return self.run(run_id) + ":journal"

    def run_waiters(self, client_id: str) -> str:
        """Wake-ups of one AgentClient's run reader: a new wait on a run appends an entry, so
        the reader's blocked XREAD (which also reads this stream) returns at once."""
        return f"{self.prefix}:waiters:{validate_name('client', client_id)}"

    # --- sessions -----------------------------------------------------------------------
    def session(self, session_id: str) -> str:
        """Metadata of one conversation."""
        return f"{self.prefix}:{{session:{validate_name('session', session_id)}}}"

    def session_items(self, session_id: str) -> str:
        """The items (messages) of one conversation, oldest first."""
        return self.session(session_id) + ":items"

    def session_lease(self, session_id: str) -> str:
        """Held by the one run that may use the conversation now."""
        return self.session(session_id) + ":lease"

    def session_doc(self, session_id: str) -> str:
        """The RedisJSON document of a :class:`~runtime.sessions.JSONSession`."""
        return self.session(session_id) + ":doc"

    def session_turns(self, session_id: str) -> str:
        """Submit order of the conversation's runs: who runs next (one run at a time)."""
        return self.session(session_id) + ":turns"

    # --- coordination -------------------------------------------------------------------
    def coordination(self, stream_name: str, event_type: str) -> str:
        """One event type of a coordination stream; the types of one stream share a slot."""
        validate_name("coordination stream", stream_name)
        return f"{self.prefix}:{{coord:{stream_name}}}:{validate_name('event type', event_type)}"

    # --- observability ------------------------------------------------------------------
    def events(self) -> str:
        """Lifecycle events of every run (started, completed, error, handoff)."""
        return f"{self.prefix}:events"

    def traces(self) -> str:
        """Recent traces, one entry per trace (its summary), trimmed to a MAXLEN setting."""
        return f"{self.prefix}:traces"

    def trace(self, trace_id: str) -> str:
        """The summary of one trace (name, run, agent, start, end, status); *trace_id* is the
        32 hex digits of the W3C trace id."""
        return f"{self.prefix}:{{trace:{validate_name('trace', trace_id)}}}"

    def trace_spans(self, trace_id: str) -> str:
        """The spans of one trace: span id → the span as JSON."""
        return self.trace(trace_id) + ":spans"

    def metric_series(self, metric: str, series: str) -> str:
        """One TimeSeries of *metric*; *series* names its labels and the writing process
        (free text chosen by the recorder; it may hold ':'). The name is a hash tag, so the
        series and its roll-up (this key ``+ ":rollup"``, fed by ``TS.CREATERULE``, which
        Redis Cluster refuses across slots) share a slot."""
        validate_name("metric", metric)
        if not series or any(c.isspace() or c in "{}" for c in series):
            raise KeyNameError(
                f"series name {series!r} must be non-empty, without spaces or braces"
            )
        return f"{self.prefix}:ts:{{{metric}:{series}}}"

    def metrics_totals(self) -> str:
        """Fleet totals of every counter since the deployment began (what `/metrics` serves)."""
        return f"{self.prefix}:metrics:totals"

    def targets(self) -> str:
        """The targets (agents and task names) workers serve; score: when last seen."""
        return f"{self.prefix}:targets"

    def fleet(self) -> str:
        """The supervisors of the deployment; score: their last heartbeat."""
        return f"{self.prefix}:fleet"

    def fleet_member(self, instance: str) -> str:
        """What one supervisor reports of itself and its workers (JSON fields, with a TTL)."""
        if not instance or any(c.isspace() or c in "{}" for c in instance):
            raise KeyNameError(
                f"instance name {instance!r} must be non-empty, without spaces or braces"
            )
        return f"{self.prefix}:fleet:{instance}"

    def scratch(self, name: str) -> str:
        """A key for short-lived checks (e.g. ``agents-worker demo``); callers delete it."""
        return f"{self.prefix}:scratch:{validate_name('scratch', name)}"
