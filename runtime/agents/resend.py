"""A run's writes after a dropped connection: send again only what is safe to repeat.

After a connection error or a timeout, a batch may or may not have run, in full or in part
(Redis runs the commands it received, in order). Sending it again as it is would repeat what
ran: an ``XADD`` adds its entry twice, an ``HINCRBY`` counts twice. So a run's writes are sent
again (as the client's retry policy says: redis-py's ``Retry``; the runtime's own clients have
none, and then nothing is sent again) without the commands that are not idempotent; those
keep, in place of a reply, an error saying they were not sent again. The scripts a worker
queues for a run are fenced by the attempt's token, so they are idempotent and are sent again.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio
import redis.exceptions

from runtime.redis.connection import Batch, run_batch

__all__ = ["NotResent", "resendable", "send_resending_safe"]

# Commands that do the same when they run twice. EVAL: the scripts queued on a run's writes
# are fenced (see runtime.agents.runs, runtime.agents.turns); XADD, HINCRBY, RPUSH… are not.
_IDEMPOTENT = frozenset(
    {"EVAL", "EVALSHA", "XACK", "XDEL", "HSET", "HDEL", "HMGET", "HGET", "HGETALL", "GET",
     "SET", "DEL", "EXPIRE", "PEXPIRE", "XREAD", "XRANGE", "EXISTS"}
)  # fmt: skip


class NotResent(redis.exceptions.ConnectionError):
    """The reply of a command that was not sent again after a connection error (it may
    or may not have run)."""


def resendable(command: tuple[Any, ...]) -> bool:
    """Whether *command* (its arguments, the name first) may be sent twice."""
    name = command[0]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return name.upper() in _IDEMPOTENT


async def send_resending_safe(client: redis.asyncio.Redis, batch: Batch) -> list[Any]:
    """Send *batch* (see :func:`run_batch`); after a connection error or a timeout, send
    again, as the client's retry policy says, its commands that are safe to repeat. The
    replies are in the order of *batch*, each command left out has a :class:`NotResent`.

    Raises:
        redis.exceptions.ConnectionError, redis.exceptions.TimeoutError: the last try failed.
    """
    retry = client.get_retry()
    if retry is None:  # the runtime's own clients: nothing is sent again
        return await run_batch(client, batch)
    commands = list(batch.commands)
    tries = 0

    async def send() -> list[Any]:
        nonlocal tries
        tries += 1
        if tries == 1:
            return await run_batch(client, batch)
        again = Batch()
        for command in commands:
            if resendable(command):
                again.execute_command(*command)
        replies = iter(await run_batch(client, again))
        return [
            next(replies) if resendable(command) else NotResent(_NOT_RESENT) for command in commands
        ]

    return await retry.call_with_retry(send, _dropped)


_NOT_RESENT = "not sent again after a connection error (it may or may not have run)"


async def _dropped(error: Exception) -> None:
    """run_batch dropped the socket already: the next try connects afresh."""
