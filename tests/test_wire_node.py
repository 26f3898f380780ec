"""The Node.js example of docs/examples/node against a real server and a real worker (issue 10
item 13): what another language publishes by the wire format runs as documented.

Node and the example's ``node_modules`` are installed by ``scripts/test``. Without them the
tests that run node are skipped, unless ``CI`` is set: then they fail, so that CI never skips
them silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio

from runtime import Keys, Settings
from runtime.agents import AgentClient
from runtime.scripts import ENQUEUE
from tests.agent_apps import make_app
from tests.conftest import make_settings
from tests.helpers import running_worker, scratch_list, wait_until

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "node"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def node() -> str:
    """The node binary, with the example's dependencies installed."""
    binary = shutil.which("node")
    if binary is None:
        missing = "node is not installed (scripts/test installs it)"
    elif not (EXAMPLE / "node_modules" / "redis").is_dir():
        missing = f"no node_modules in {EXAMPLE} (scripts/test runs npm ci there)"
    else:
        return binary
    if _in_ci():
        pytest.fail(f"{missing}: CI must run the Node.js example")
    pytest.skip(missing)


async def forget_scripts(client: redis.asyncio.Redis) -> None:
    """Empty the script cache of the test's own server, so that the examples' first EVALSHA
    meets NOSCRIPT and takes their fallback (EVAL); a server of the user's is left alone."""
    if not os.environ.get("AGENTS_WORKER_TEST_REDIS_URL"):
        await client.script_flush()


async def run_node(
    node: str, script: str, redis_url: str, keys: Keys, **env: str
) -> tuple[int, list[dict[str, Any]]]:
    """Run an example script; its exit code and the JSON lines it printed."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AW_")}
    environment |= {"REDIS_URL": redis_url, "AW_PREFIX": keys.prefix, **env}
    done = await anyio.run_process(
        [node, script], cwd=EXAMPLE, env=environment, check=False, stderr=None
    )
    lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    return done.returncode, lines


def test_the_example_embeds_the_runtimes_enqueue_script_verbatim() -> None:
    source = (EXAMPLE / "enqueue.mjs").read_text()
    embedded = re.search(r"const ENQUEUE = `(.*?)`;", source, re.S)
    assert embedded is not None, "the ENQUEUE script is gone from enqueue.mjs"
    assert embedded[1] == ENQUEUE


async def test_node_enqueues_plain_idempotent_and_delayed_work_that_runs_once(
    node: str, client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    settings = make_settings(redis_url, keys.prefix)
    await forget_scripts(client)
    async with running_worker(settings, client):
        code, lines = await run_node(
            node, "enqueue.mjs", redis_url, keys,
            AW_TARGET="echo", AW_DELAY_MS="300", AW_IDEMPOTENCY_KEY="order-18",
        )  # fmt: skip
        assert code == 0, lines
        plain, first, again, delayed = lines
        assert [plain["kind"], first["kind"]] == ["plain", "idempotent"]
        assert not first["duplicate"] and again == {
            "kind": "idempotent", "task_id": first["task_id"], "duplicate": True,
        }  # fmt: skip
        assert delayed["kind"] == "delayed" and delayed["run_at_ms"] > 0  # it went to the set
        expected = [plain["task_id"], first["task_id"], delayed["task_id"]]

        async def all_ran() -> bool:
            return set(expected) <= set(await scratch_list(client, keys, "effects"))

        await wait_until(all_ran, what="the three tasks enqueued by node")
    assert Counter(await scratch_list(client, keys, "effects")) == Counter(expected)
    assert await client.xlen(keys.inbox("echo")) == 0
    assert await client.zcard(keys.delayed("echo")) == 0
    idem = keys.idempotency("echo", "order-18")
    assert await client.get(idem) == first["task_id"].encode()
    assert 0 < await client.pttl(idem) <= 86_400_000


@pytest.fixture
def agent_settings(redis_url: str, keys: Keys) -> Settings:
    return make_settings(redis_url, keys.prefix, **{"runs.timeout_seconds": "10"})


async def test_node_submits_an_agent_run_and_prints_the_result_the_record_holds(
    node: str, client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings, redis_url: str
) -> None:
    """A run submitted from node in a conversation runs once (a retry of the submit is
    recognised), and node prints the outcome the record holds, read by XREAD BLOCK."""
    app, model = make_app()
    env = {
        "AW_AGENT": "triage", "AW_INPUT": "hello from node", "AW_SESSION": "node-c",
        "AW_RUN_ID": "node-run-1", "AW_RUN_TIMEOUT_SECONDS": "10", "AW_WAIT_SECONDS": "20",
    }  # fmt: skip
    await forget_scripts(client)
    async with running_worker(agent_settings, client, serving=app):
        code, (submit, printed) = await run_node(node, "submit_run.mjs", redis_url, keys, **env)
        retry_code, (resubmit, reprinted) = await run_node(
            node, "submit_run.mjs", redis_url, keys, **env
        )
    assert code == retry_code == 0
    assert submit == {
        "kind": "submit", "state": "submitted", "run_id": "node-run-1",
        "entry_id": submit["entry_id"], "seq": 1,
    }  # fmt: skip
    assert resubmit == {**submit, "state": "duplicate", "seq": 0}  # its turn is over
    assert printed["status"] == "completed" and printed["session_id"] == "node-c"
    assert printed["final_output"] == "reply to hello from node" and reprinted == printed
    handle = AgentClient(client, keys=keys, settings=agent_settings).handle("node-run-1")
    assert msgspec.to_builtins(await handle.result(timeout=5)) == printed
    assert msgspec.to_builtins(await handle.status()) == printed  # the record says the same
    assert [call[-1]["content"] for call in model.calls] == ["hello from node"]  # once
