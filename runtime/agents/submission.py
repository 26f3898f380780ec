"""Submitting an agent run from any language: one Lua script shipped with the package.

``submit_run.lua`` (beside this module) does in one atomic step what
:meth:`AgentClient.run <runtime.agents.client.AgentClient.run>` does in one round trip: it draws
the run's number in its conversation, creates the run's record, adds the work entry once per
run id and marks the record ``enqueued``. A client in another language calls it with EVALSHA
(or EVAL); ``docs/wire-format.md`` documents its keys, arguments and reply, and
``docs/examples/node/`` shows it from Node.js.

    import redis
    from runtime import Keys
    from runtime.agents.submission import submit_args, submit_keys, submit_script

    script = redis.Redis().register_script(submit_script())
    request = b'{"run_id":"r-1","agent":"triage","input":"hi","session_id":"c-42"}'
    keys = submit_keys(Keys("aw"), "triage", "r-1", "c-42")
    state, entry_id, seq = script(keys=keys, args=submit_args("aw", request))

Its keys lie in several hash slots: on Redis Cluster the same three steps are sent one by one
(:func:`submit_steps`), each idempotent by run id.
"""

from __future__ import annotations

import re
from importlib import resources

from runtime.keys import Keys

__all__ = ["SCRIPT_NAME", "STEPS", "submit_args", "submit_keys", "submit_script", "submit_steps"]

SCRIPT_NAME = "submit_run.lua"
"""The script's file name, in the ``runtime.agents`` package."""

STEPS = ("submit_record", "assign", "enqueue_run")
"""The steps of a submit, in the order a Cluster publisher sends them (then ``HSET <record>
enqueued 1``)."""

_STEP = re.compile(r"^local function (\w+)\(KEYS, ARGV\)\n(.*?)\nend -- of step \1$", re.M | re.S)


def submit_script() -> str:
    """The text of ``submit_run.lua``."""
    return resources.files("runtime.agents").joinpath(SCRIPT_NAME).read_text(encoding="utf-8")


def submit_steps() -> dict[str, str]:
    """The step scripts of ``submit_run.lua`` (name → Lua text), each a script of its own
    for EVAL: what a publisher on Redis Cluster sends, one step per slot."""
    return {m[1]: m[2] + "\n" for m in _STEP.finditer(submit_script())}


def submit_keys(keys: Keys, agent: str, run_id: str, session_id: str | None = None) -> list[str]:
    """The script's KEYS for a run of *agent*: record, guard, inbox[, the session's turns]."""
    names = [keys.run(run_id), keys.run_submitted(agent, run_id), keys.inbox(agent)]
    if session_id is not None:
        names.append(keys.session_turns(session_id))
    return names


def submit_args(
    prefix: str,
    request: bytes | str,
    *,
    result_ttl_seconds: int = 86_400,
    timeout_seconds: float = 120.0,
    max_entry_bytes: int = 1_048_576,
    traceparent: str | None = None,
) -> list[bytes | str | int]:
    """The script's ARGV: the key *prefix*, the *request* JSON, the limits the settings
    name (``runs.result_ttl_seconds``, ``runs.timeout_seconds``, ``streams.max_entry_bytes``)
    and the W3C *traceparent* of the caller's span (the run joins its trace), if any."""
    guard = result_ttl_seconds  # as RunStore's guard: no longer than the record
    return [prefix, request, result_ttl_seconds, guard, max_entry_bytes, traceparent or ""]
