// Submitting an agent run from Node.js with the runtime's script (runtime/agents/submit_run.lua),
// then waiting for its outcome on the run's event stream (docs/wire-format.md). Prints one JSON
// line for the submit, then the run's result (the data of its terminal event); exits 0 when it
// completed, 1 when it failed or was cancelled, 2 when another run has the id, 3 on a timeout.
//
//   REDIS_URL=redis://localhost:6379 AW_AGENT=triage AW_SESSION=c-42 AW_INPUT='hello' \
//     node submit_run.mjs
//
// Submitting again with the same AW_RUN_ID (a retry after a lost reply) is safe: the script
// recognises the request ("duplicate") and the run executes once.

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { config, connect, evalScript, keys } from "./aw.mjs";

const TERMINAL = new Set(["run.completed", "run.failed", "run.cancelled"]);
const REQUEUED = "run.requeued"; // a replayed dead letter: the run goes on after its terminal event
const COUNT = 500;

const scriptPath =
  config.submitScript ??
  fileURLToPath(new URL("../../../runtime/agents/submit_run.lua", import.meta.url));
const SUBMIT_RUN = readFileSync(scriptPath, "utf8");

/** Submit one run; returns [state, entry id, seq] (see the script's header). */
async function submitRun(client, request) {
  const scriptKeys = [
    keys.run(request.run_id),
    keys.runSubmitted(request.agent, request.run_id),
    keys.inbox(request.agent),
  ];
  if (request.session_id) scriptKeys.push(keys.sessionTurns(request.session_id));
  const guardTtl = config.resultTtlSeconds + Math.ceil(config.runTimeoutSeconds);
  const args = [
    config.prefix,
    JSON.stringify(request),
    config.resultTtlSeconds,
    guardTtl,
    config.maxEntryBytes,
  ];
  return await evalScript(client, SUBMIT_RUN, scriptKeys, args);
}

/** Wait for the run's outcome: its last terminal event, unless run.requeued follows it. */
async function waitForResult(client, runId, seconds) {
  const deadline = Date.now() + seconds * 1000;
  let after = "0-0";
  let outcome = null;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) return null;
    const reply = await client.xRead(
      { key: keys.runEvents(runId), id: after },
      { BLOCK: Math.max(1, Math.min(left, 5000)), COUNT },
    );
    const entries = reply?.[0]?.messages ?? [];
    for (const { id, message } of entries) {
      after = id;
      const event = JSON.parse(message.event);
      if (TERMINAL.has(event.type)) outcome = event;
      else if (event.type === REQUEUED) outcome = null;
    }
    if (outcome !== null && entries.length < COUNT) return outcome.data;
    if (entries.length === 0 && !(await client.exists(keys.run(runId)))) {
      throw new Error(`run ${runId} is unknown (or its record expired)`);
    }
  }
}

const client = await connect();
let code = 0;
try {
  const request = {
    run_id: config.runId ?? randomBytes(16).toString("hex"),
    agent: config.agent,
    input: config.input,
  };
  if (config.sessionId) request.session_id = config.sessionId;
  const [state, entryId, seq] = await submitRun(client, request);
  console.log(JSON.stringify({ kind: "submit", state, run_id: request.run_id, entry_id: entryId, seq }));
  if (state === "exists") {
    console.error(`another run has the id ${request.run_id}`);
    code = 2;
  } else {
    const result = await waitForResult(client, request.run_id, config.waitSeconds);
    if (result === null) {
      console.error(`run ${request.run_id} did not end within ${config.waitSeconds} s`);
      code = 3;
    } else {
      console.log(JSON.stringify(result));
      code = result.status === "completed" ? 0 : 1;
    }
  }
} finally {
  await client.close();
}
process.exitCode = code;
