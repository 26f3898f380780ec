// What the examples share: configuration from the environment, the runtime's key names, and
// EVALSHA with a fallback to EVAL (a script cache flushed or a restarted server answers
// NOSCRIPT).

import { createHash } from "node:crypto";

import { createClient } from "redis";

const env = process.env;

/** Settings, each from an environment variable (defaults are the runtime's defaults). */
export const config = {
  redisUrl: env.REDIS_URL ?? "redis://localhost:6379",
  prefix: env.AW_PREFIX ?? "aw", // redis.key_prefix
  target: env.AW_TARGET ?? "send_receipt", // enqueue.mjs: the task handler
  idempotencyKey: env.AW_IDEMPOTENCY_KEY ?? "order-18",
  idempotencyWindowMs: env.AW_IDEMPOTENCY_WINDOW_MS ?? "86400000", // streams.idempotency_window_seconds × 1000
  delayMs: env.AW_DELAY_MS ?? "60000",
  agent: env.AW_AGENT ?? "triage", // submit_run.mjs: the agent
  input: env.AW_INPUT ?? "My invoice 1042 was charged twice",
  sessionId: env.AW_SESSION || null, // a conversation: its runs execute one at a time, in order
  runId: env.AW_RUN_ID || null, // a run id of your own makes a retry safe; default: random
  resultTtlSeconds: Number(env.AW_RESULT_TTL_SECONDS ?? 86400), // runs.result_ttl_seconds
  runTimeoutSeconds: Number(env.AW_RUN_TIMEOUT_SECONDS ?? 120), // runs.timeout_seconds
  maxEntryBytes: Number(env.AW_MAX_ENTRY_BYTES ?? 1048576), // streams.max_entry_bytes
  waitSeconds: Number(env.AW_WAIT_SECONDS ?? 60),
  submitScript: env.AW_SUBMIT_SCRIPT ?? null, // path of submit_run.lua; default: this repository's
};

/** Key names, as runtime/keys.py builds them. Names may not hold whitespace, ':', '{' or '}'. */
export const keys = {
  inbox: (target) => `${config.prefix}:{inbox:${target}}`,
  delayed: (target) => `${keys.inbox(target)}:delayed`,
  idempotency: (target, key) => `${keys.inbox(target)}:idem:${key}`,
  runSubmitted: (agent, runId) => `${keys.inbox(agent)}:submitted:${runId}`,
  run: (runId) => `${config.prefix}:{run:${runId}}`,
  runEvents: (runId) => `${keys.run(runId)}:events`,
  sessionTurns: (sessionId) => `${config.prefix}:{session:${sessionId}}:turns`,
};

export async function connect() {
  const client = createClient({ url: config.redisUrl });
  client.on("error", (error) => console.error(`redis: ${error.message}`));
  await client.connect();
  return client;
}

/** Run a Lua script by its SHA-1 (EVALSHA); sent whole (EVAL) when the server does not have it. */
export async function evalScript(client, script, scriptKeys, args) {
  const options = { keys: scriptKeys, arguments: args.map(String) };
  const sha = createHash("sha1").update(script).digest("hex");
  try {
    return await client.evalSha(sha, options);
  } catch (error) {
    if (!String(error?.message).startsWith("NOSCRIPT")) throw error;
    return await client.eval(script, options);
  }
}
