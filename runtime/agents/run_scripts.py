"""The Lua scripts of run records (:mod:`runtime.agents.runs`): the submit's steps (also in
``submit_run.lua``, verbatim), the fenced writes of a run's events and result, a replay's
requeue and a cancel request. Each one's keys share the run's hash tag (or the inbox's)."""

__all__ = ["CANCEL", "EMIT", "ENQUEUE_RUN", "FINISH", "REQUEUE", "SUBMIT_RECORD"]

# KEYS: record. ARGV: ttl, fingerprint, field, value, … → 1: go on (the record was created
# now, or by an earlier try of this submit that did not complete), 2: this very submit went
# through before (same fingerprint), 0: another run has this id.
SUBMIT_RECORD = """
local read = redis.call('HMGET', KEYS[1], 'enqueued', 'fingerprint', 'status')
if read[3] and read[2] ~= ARGV[2] then return 0 end
if read[1] then return 2 end
if not read[3] then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[2], unpack(ARGV, 3))
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 1
"""

# KEYS: guard (in the inbox's slot), inbox. ARGV: envelope, ttl → the entry id: the one added
# now, or the one an earlier try of the submit added.
ENQUEUE_RUN = """
local id = redis.call('GET', KEYS[1])
if id then return id end
id = redis.call('XADD', KEYS[2], '*', 'envelope', ARGV[1])
redis.call('SET', KEYS[1], id, 'EX', ARGV[2])
return id
"""

# KEYS: record, events. ARGV: ttl, maxlen, mark (the attempt's token:the write's number), the
# attempt's token, number of field/value pairs n that mark the run running (0: not this
# time), the n pairs, then the events. → 'again' (this write was made already: nothing done),
# 'done' (over already), 'cancel' (a cancel was asked for) or 'ok' (marked running when asked;
# the attempt is counted once, whatever the number of writes that ask).
EMIT = """
if redis.call('HGET', KEYS[1], 'written') == ARGV[3] then return 'again' end
local n = tonumber(ARGV[5])
local state = 'ok'
if n > 0 then
  local read = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested', 'attempt')
  if read[1] == 'completed' or read[1] == 'failed' or read[1] == 'cancelled' then
    state = 'done'
  elseif read[2] then
    state = 'cancel'
  elseif read[3] ~= ARGV[4] then
    redis.call('HSET', KEYS[1], 'attempt', ARGV[4], unpack(ARGV, 6, 5 + 2 * n))
    redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  end
end
for i = 6 + 2 * n, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[i])
end
redis.call('HSET', KEYS[1], 'written', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return state
"""

# KEYS: record, events. ARGV: ttl, maxlen, count the attempt (1/0), this attempt's token,
# number of field/value pairs n, the n pairs, then the events to append (the terminal one
# last). An attempt is counted once (not when its token marked the run running already).
# → 1 (stored now, or by this attempt before: a write sent again), or 0 when the run had
# ended already (another attempt's result stands).
FINISH = """
local read = redis.call('HMGET', KEYS[1], 'status', 'attempt')
local status = read[1]
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  if read[2] == ARGV[4] then return 1 end
  return 0
end
if ARGV[3] == '1' and read[2] ~= ARGV[4] then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
local n = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'attempt', ARGV[4], unpack(ARGV, 6, 5 + 2 * n))
for i = 6 + 2 * n, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""

# KEYS: record, events. ARGV: ttl, maxlen, replay marker, the run.requeued event, then field,
# value, … (what the record says of the run). Puts a replayed run back to 'queued', once per
# marker; a run that completed or was cancelled stays as it is (its letter came from an
# entry delivered too often after its outcome was written; a cancel is not undone).
# → {1, 'queued'} when done now, {0, status} when not (seen before, or kept).
REQUEUE = """
local read = redis.call('HMGET', KEYS[1], 'status', 'replay')
if read[2] == ARGV[3] or read[1] == 'completed' or read[1] == 'cancelled' then
  return {0, read[1] or ''}
end
redis.call('HDEL', KEYS[1], 'final_output', 'last_agent', 'usage', 'error', 'error_type',
           'worker', 'started_at', 'finished_at', 'cancel_requested', 'attempt')
redis.call('HSET', KEYS[1], 'status', 'queued', 'replay', ARGV[3], 'enqueued', '1',
           unpack(ARGV, 5))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return {1, 'queued'}
"""

# KEYS: record. → 1 when a cancel was recorded, 0 when the run is unknown or already over.
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'cancelled' then
  return 0
end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
return 1
"""
