-- agents-worker: submit an agent run in one atomic step, from any language (EVAL / EVALSHA).
-- What it writes is what AgentClient.run writes (runtime/agents/runs.py, RunStore.submit): the
-- run's number in its conversation, its record, its work entry (once per run id) and the
-- 'enqueued' mark. Its keys lie in several hash slots: on Redis Cluster, send the three steps
-- below one by one instead (docs/wire-format.md, "On Redis Cluster").
--
-- KEYS[1]  <prefix>:{run:<run_id>}                        the run's record (hash)
-- KEYS[2]  <prefix>:{inbox:<agent>}:submitted:<run_id>    the guard of its enqueue (string)
-- KEYS[3]  <prefix>:{inbox:<agent>}                       the agent's inbox (stream)
-- KEYS[4]  <prefix>:{session:<session_id>}:turns          only for a run with a session_id
-- ARGV[1]  the key prefix (e.g. 'aw'); KEYS must be exactly the keys it makes
-- ARGV[2]  the run request, a JSON object: run_id, agent (required), input, session_id,
--          context, max_turns, stream, handoff; not submitted_at nor seq (set here)
-- ARGV[3]  seconds the record is kept (runs.result_ttl_seconds); '' or absent: 86400
-- ARGV[4]  seconds the guard is kept; '' or absent: ARGV[3] (at most as long as the record)
-- ARGV[5]  the largest envelope in bytes (streams.max_entry_bytes); '' or absent: 1048576
-- ARGV[6]  the W3C traceparent of the publisher's span ('00-<32 hex>-<16 hex>-<2 hex>'): the
--          run joins that trace; '' or absent: the run's own trace, whose id is the first 32
--          hex digits of the SHA-1 of its run id (the record's trace_id either way)
--
-- Reply: {'submitted', entry id, seq}: enqueued now; {'duplicate', entry id, seq}: this very
-- request was submitted under this run id before (a retry: nothing written again);
-- {'exists', '', 0}: another run has this id (nothing written). seq is the run's number in its
-- conversation (0: no session, or its turn is over). A request it cannot accept is an error
-- reply starting with 'ERR submit_run:'; nothing is written then.

-- step assign: KEYS: turns. ARGV: run id → the run's number (runtime/agents/turns.py)
local function assign(KEYS, ARGV)
local seq = redis.call('HGET', KEYS[1], 'id:' .. ARGV[1])
if seq then return tonumber(seq) end
seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local at = redis.call('TIME')[1]
redis.call('HSET', KEYS[1], 'run:' .. seq, ARGV[1], 'at:' .. seq, at, 'id:' .. ARGV[1], seq)
return seq
end -- of step assign

-- step submit_record: KEYS: record. ARGV: ttl, fingerprint, field, value, … → 1: go on,
-- 2: this submit went through before, 0: another run has this id (runtime/agents/runs.py)
local function submit_record(KEYS, ARGV)
local read = redis.call('HMGET', KEYS[1], 'enqueued', 'fingerprint', 'status')
if read[3] and read[2] ~= ARGV[2] then return 0 end
if read[1] then return 2 end
if not read[3] then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[2], unpack(ARGV, 3))
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 1
end -- of step submit_record

-- step enqueue_run: KEYS: guard, inbox. ARGV: envelope, ttl → the entry id, added once per
-- run id (runtime/agents/runs.py)
local function enqueue_run(KEYS, ARGV)
local id = redis.call('GET', KEYS[1])
if id then return id end
id = redis.call('XADD', KEYS[2], '*', 'envelope', ARGV[1])
redis.call('SET', KEYS[1], id, 'EX', ARGV[2])
return id
end -- of step enqueue_run

local function refuse(why)
  return redis.error_reply('ERR submit_run: ' .. why)
end

-- As runtime.keys.validate_name: 1-200 characters, no whitespace (Unicode's too), no control
-- character, ':', '{' or '}'.
local NOT_IN_NAMES = {
  '[%s%c{}:]', '\194[\133\160]', '\225\154\128', '\226\128[\128-\138\168\169\175]',
  '\226\129\159', '\227\128\128',
}
local function name_ok(name)
  if type(name) ~= 'string' or name == '' then return false end
  local _, characters = string.gsub(name, '[^\128-\191]', '')
  if characters > 200 then return false end
  for _, pattern in ipairs(NOT_IN_NAMES) do
    if string.find(name, pattern) then return false end
  end
  return true
end

-- JSON objects and arrays both decode to tables: an object has no [1] (its keys are strings)
local function object(v)
  return type(v) == 'table' and v[1] == nil
end
local function list_of_objects(v)
  if type(v) ~= 'table' or (next(v) ~= nil and v[1] == nil) then return false end
  for i = 1, #v do
    if not object(v[i]) then return false end
  end
  return true
end
local function absent(v)
  return v == nil or v == cjson.null
end

-- Why the worker could not read the request as a RunRequest (runtime/agents/protocol.py),
-- or nil: such a request would be dead-lettered (invalid_payload).
local function unreadable(request)
  if request.submitted_at ~= nil or request.seq ~= nil then
    return 'leave submitted_at and seq out of the request: this script sets them'
  end
  local input = request.input
  if not (absent(input) or type(input) == 'string' or list_of_objects(input)) then
    return 'input must be a string, a list of objects (response input items) or null'
  end
  if request.context ~= nil and not object(request.context) then
    return 'context must be an object'
  end
  local max_turns = request.max_turns
  if not absent(max_turns)
      and (type(max_turns) ~= 'number' or max_turns ~= math.floor(max_turns)) then
    return 'max_turns must be an integer or null'
  end
  if not absent(request.stream) and type(request.stream) ~= 'boolean' then
    return 'stream must be true, false or null'
  end
  local handoff = request.handoff
  if not absent(handoff) and not (object(handoff) and type(handoff.from_agent) == 'string') then
    return 'handoff must be null or an object with a from_agent string'
  end
  return nil
end

local function whole_seconds(text, default)
  if text == nil or text == '' then return default end
  local n = tonumber(text)
  if n == nil or n < 1 or n ~= math.floor(n) then return nil end
  return n
end

local prefix, raw = ARGV[1], ARGV[2]
if type(prefix) ~= 'string' or prefix == '' or type(raw) ~= 'string' then
  return refuse('ARGV: prefix, request JSON[, record ttl, guard ttl, max envelope bytes]')
end
local rest = string.match(raw, '^%s*{(.*)$')
local decoded, request = pcall(cjson.decode, raw)
if rest == nil or not decoded or type(request) ~= 'table' then
  return refuse('the request is not a JSON object')
end
local run_id, agent, session_id = request.run_id, request.agent, request.session_id
if session_id == cjson.null then session_id = nil end
local RULE = ' must be 1-200 characters without whitespace, control characters, ":", "{" or "}"'
if not name_ok(run_id) then return refuse('run_id' .. RULE) end
if not name_ok(agent) then return refuse('agent' .. RULE) end
if session_id ~= nil and not name_ok(session_id) then return refuse('session_id' .. RULE) end
local why = unreadable(request)
if why then return refuse(why) end
local traceparent, trace_id = ARGV[6], nil
if traceparent == nil or traceparent == '' then
  traceparent = nil
  trace_id = string.sub(redis.sha1hex(run_id), 1, 32)
else
  local span
  trace_id, span = string.match(traceparent, '^00%-(%x+)%-(%x+)%-%x%x$')
  if not trace_id or #trace_id ~= 32 or #span ~= 16 or string.find(traceparent, '%u')
      or trace_id == string.rep('0', 32) or span == string.rep('0', 16) then
    return refuse('ARGV[6] must be a W3C traceparent, 00-<32 hex>-<16 hex>-<2 hex>, or empty')
  end
end
local ttl = whole_seconds(ARGV[3], 86400)
local guard_ttl = whole_seconds(ARGV[4], ttl or 0)
local max_bytes = whole_seconds(ARGV[5], 1048576)
if not ttl or not guard_ttl or not max_bytes then
  return refuse('ARGV[3], ARGV[4] and ARGV[5] must be whole numbers >= 1 (or empty)')
end

local inbox = prefix .. ':{inbox:' .. agent .. '}'
local want = {prefix .. ':{run:' .. run_id .. '}', inbox .. ':submitted:' .. run_id, inbox}
if session_id ~= nil then want[4] = prefix .. ':{session:' .. session_id .. '}:turns' end
if #KEYS ~= #want then
  return refuse(#want .. ' keys expected (KEYS[4] only for a run with a session), not ' .. #KEYS)
end
for i = 1, #want do
  if KEYS[i] ~= want[i] then return refuse('KEYS[' .. i .. '] must be ' .. want[i]) end
end

-- Redis's clock: one time for every process that compares it
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
-- the request as sent, with its submit time: the client's JSON is kept byte for byte
local payload = '{"submitted_at":' .. now .. (string.match(rest, '^%s*}') and '' or ',') .. rest
local envelope = '{"v":1,"id":' .. cjson.encode(run_id) .. ',"target":' .. cjson.encode(agent)
  .. ',"payload":' .. payload .. ',"created_at":' .. now
  .. (traceparent and (',"traceparent":' .. cjson.encode(traceparent)) or '') .. '}'
if #envelope > max_bytes then
  return refuse('the envelope is ' .. #envelope .. ' bytes, over streams.max_entry_bytes ('
    .. max_bytes .. ')')
end

local fingerprint = redis.sha1hex(raw)
local fields = {ttl, fingerprint, 'status', 'queued', 'agent', agent,
                'session_id', session_id or '', 'submitted_at', now, 'trace_id', trace_id}
local state = submit_record({KEYS[1]}, fields)
if state == 0 then return {'exists', '', 0} end
if state == 2 then  -- a retry of a submit that went through: nothing to write
  local seq = session_id and redis.call('HGET', KEYS[4], 'id:' .. run_id)
  return {'duplicate', redis.call('GET', KEYS[2]) or '', tonumber(seq or 0)}
end
local seq = 0
if session_id ~= nil then seq = assign({KEYS[4]}, {run_id}) end
local entry_id = enqueue_run({KEYS[2], KEYS[3]}, {envelope, guard_ttl})
redis.call('HSET', KEYS[1], 'enqueued', 1)
return {'submitted', entry_id, seq}
