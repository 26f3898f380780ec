// Publishing work to agents-worker from Node.js: a plain entry, an idempotent one, a delayed one
// (docs/wire-format.md). Configuration from the environment (see aw.mjs); prints one JSON line
// per enqueue.
//
//   REDIS_URL=redis://localhost:6379 AW_TARGET=send_receipt node enqueue.mjs

import { randomBytes } from "node:crypto";

import { config, connect, evalScript, keys } from "./aw.mjs";

// The runtime's enqueue script, verbatim (runtime/scripts.py, ENQUEUE; tests/test_wire_node.py
// checks that it is the same). KEYS: inbox, delayed set[, idempotency key]. ARGV: envelope,
// task id, idempotency window in ms, 'in' (ms from now) or 'at' (ms since the epoch), ms.
// Reply: [1, entry id or '', run-at ms or 0] | [0, the first task's id] (a duplicate).
// --- ENQUEUE begins ---
const ENQUEUE = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

if KEYS[3] then
  local first = redis.call('GET', KEYS[3])
  if first then return {0, first} end
end
local now = now_ms()
local at = tonumber(ARGV[5])
if ARGV[4] == 'in' then at = now + at end
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3]) end
if at > now then
  redis.call('ZADD', KEYS[2], at, ARGV[1])
  return {1, '', at}
end
return {1, redis.call('XADD', KEYS[1], '*', 'envelope', ARGV[1]), 0}
`;
// --- ENQUEUE ends ---

const newTaskId = () => randomBytes(16).toString("hex");

/** The JSON of one envelope (schema version 1). */
function envelope(taskId, payload, extra = {}) {
  return JSON.stringify({
    v: 1,
    id: taskId,
    target: config.target,
    payload,
    created_at: Date.now() / 1000, // informational: due times and deadlines use Redis's clock
    ...extra,
  });
}

const client = await connect();
try {
  const target = config.target;
  const inbox = keys.inbox(target);

  // 1. A plain entry: one XADD.
  const plainId = newTaskId();
  const entryId = await client.xAdd(inbox, "*", { envelope: envelope(plainId, { order: 17 }) });
  console.log(JSON.stringify({ kind: "plain", task_id: plainId, entry_id: entryId }));

  // 2. An idempotent entry, sent twice under one key: the second call returns the first task.
  const key = config.idempotencyKey;
  const idemKeys = [inbox, keys.delayed(target), keys.idempotency(target, key)];
  for (let attempt = 0; attempt < 2; attempt++) {
    const taskId = newTaskId();
    const body = envelope(taskId, { order: 18 }, { idempotency_key: key });
    const args = [body, taskId, config.idempotencyWindowMs, "at", 0];
    const [added, idOrFirst] = await evalScript(client, ENQUEUE, idemKeys, args);
    console.log(
      JSON.stringify(
        added === 1
          ? { kind: "idempotent", task_id: taskId, entry_id: idOrFirst, duplicate: false }
          : { kind: "idempotent", task_id: idOrFirst, duplicate: true },
      ),
    );
  }

  // 3. A delayed entry: due AW_DELAY_MS from now by Redis's clock (the script reads TIME).
  const laterId = newTaskId();
  const delayedArgs = [envelope(laterId, { order: 19 }), laterId, config.idempotencyWindowMs];
  const [, , runAtMs] = await evalScript(client, ENQUEUE, [inbox, keys.delayed(target)], [
    ...delayedArgs, "in", config.delayMs,
  ]);
  console.log(JSON.stringify({ kind: "delayed", task_id: laterId, run_at_ms: runAtMs }));
} finally {
  await client.close();
}
