"""The operator commands against a real Redis: enqueue, status, dlq list/show/replay/purge."""

from __future__ import annotations

import json

import anyio
import pytest
import redis.asyncio

from runtime import Keys
from runtime.dlq import DeadLetters
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until
from tests.test_cli import run_cli

pytestmark = pytest.mark.anyio


@pytest.fixture
def cli_args(redis_url: str, keys: Keys) -> list[str]:
    return ["--redis-url", redis_url, "--key-prefix", keys.prefix]


async def test_enqueue_status_and_dead_letters(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    sent = run_cli(*cli_args, "enqueue", "fatal", '{"order": 17}')
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    assert len(task_id) == 32

    status = json.loads(run_cli(*cli_args, "status", "--json").stdout)
    assert [(s["target"], s["length"], s["dlq"]) for s in status] == [("fatal", 1, 0)]

    letters = DeadLetters(client, keys=keys)
    async with running_worker(make_settings(redis_url, keys.prefix), client, "ops:0"):

        async def dead() -> bool:
            return await letters.size("fatal") == 1

        await wait_until(dead, what="the dead letter")

    status = json.loads(run_cli(*cli_args, "status", "--json").stdout)
    fatal = next(s for s in status if s["target"] == "fatal")  # the worker made every inbox
    assert fatal["length"] == 0 and fatal["pending"] == 0 and fatal["dlq"] == 1
    assert fatal["groups"][0]["name"] == "workers"
    assert fatal["groups"][0]["consumers"][0]["name"] == "ops:0"
    table = run_cli(*cli_args, "status").stdout
    assert "fatal" in table and "ops:0" in table

    listed = json.loads(run_cli(*cli_args, "dlq", "list", "fatal", "--json").stdout)
    [letter] = listed
    assert letter["task_id"] == task_id and letter["reason"] == "permanent"
    assert letter["detail"] == "the handler raised PermanentError"
    assert letter["envelope"]["payload"] == {"order": 17}
    assert "permanent" in run_cli(*cli_args, "dlq", "list", "fatal").stdout
    sizes = json.loads(run_cli(*cli_args, "dlq", "list", "--json").stdout)
    assert sizes["fatal"] == 1 and sizes["echo"] == 0

    shown = json.loads(run_cli(*cli_args, "dlq", "show", "fatal", letter["id"]).stdout)
    assert shown["error"] == "PermanentError: cannot ever work"
    missing = run_cli(*cli_args, "dlq", "show", "fatal", "1-1")
    assert missing.returncode == 1 and "no dead letter 1-1" in missing.stderr

    assert run_cli(*cli_args, "dlq", "replay", "fatal").returncode == 2  # ids or --all
    replayed = run_cli(*cli_args, "dlq", "replay", "fatal", letter["id"])
    assert replayed.returncode == 0, replayed.stderr
    assert "1 replayed, 0 skipped" in replayed.stdout
    assert await client.xlen(keys.inbox("fatal")) == 1 and await letters.size("fatal") == 0
    [entry] = await client.xrange(keys.inbox("fatal"))
    assert json.loads(entry[1][b"envelope"])["id"] == task_id  # the same task, attempt reset

    await client.xadd(keys.dlq("fatal"), {"reason": "x"})
    await client.xadd(keys.dlq("fatal"), {"reason": "y"})
    refused = run_cli(*cli_args, "dlq", "purge", "fatal", "--all")  # no terminal to confirm
    assert refused.returncode == 1 and await letters.size("fatal") == 2
    purged = run_cli(*cli_args, "dlq", "purge", "fatal", "--all", "--yes")
    assert "2 deleted" in purged.stdout and await letters.size("fatal") == 0


async def test_operator_commands_need_a_redis(tmp_path: object) -> None:
    result = run_cli(
        "--set", f"redis.embedded.data_dir={tmp_path}", "status"
    )  # fmt: skip
    assert result.returncode == 1
    assert "no Redis to talk to" in result.stderr
    assert "Traceback" not in result.stderr


async def test_enqueue_refuses_bad_input(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys
) -> None:
    bad_json = run_cli(*cli_args, "enqueue", "echo", "{nope")
    assert bad_json.returncode == 2 and "pass --text" in bad_json.stderr
    bad_target = run_cli(*cli_args, "enqueue", "no such", "1")
    assert bad_target.returncode == 1 and "target name 'no such'" in bad_target.stderr
    twice = run_cli(*cli_args, "enqueue", "echo", "1", "--key", "k1")
    again = run_cli(*cli_args, "enqueue", "echo", "1", "--key", "k1")
    assert again.stdout.startswith(twice.stdout.strip()) and "duplicate" in again.stdout
    assert await client.xlen(keys.inbox("echo")) == 1


async def test_submit_follows_a_run_to_its_result(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    from workers.demo import app as demo_app

    settings = make_settings(redis_url, keys.prefix)
    async with running_worker(settings, client, "submit:0", serving=demo_app):
        followed = await anyio.to_thread.run_sync(
            lambda: run_cli(
                *cli_args,
                "submit",
                "triage",
                "invoice 1043 charged twice",
                "--session",
                "cli-1",
                "--follow",
                "--wait",
                "30",
            )
        )
        assert followed.returncode == 0, followed.stderr
        assert "handoff triage → billing" in followed.stderr
        assert "billing → lookup_invoice" in followed.stderr
        assert "billing: (offline demo model)" in followed.stdout
        plain = await anyio.to_thread.run_sync(
            lambda: run_cli(*cli_args, "submit", "triage", "hello", "--wait", "30", "--json")
        )
    doc = json.loads(plain.stdout)
    assert doc["status"] == "completed" and doc["agent"] == "triage"
    bad = run_cli(*cli_args, "submit", "triage", "x", "--context", "[1]")
    assert bad.returncode == 2 and "--context must be a JSON object" in bad.stderr


async def test_dlq_list_and_show_print_a_letters_detail(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys
) -> None:
    """A letter's reason is a short code and its detail a sentence: both are shown."""
    envelope = json.dumps({"v": 1, "id": "t-9", "target": "fatal", "payload": 1})
    letter_id = await client.xadd(
        keys.dlq("fatal"),
        {
            "reason": "max_deliveries",
            "detail": "delivered 6 times without an outcome",
            "error": "the worker running it died or hung",
            "task_id": "t-9",
            "envelope": envelope,
        },
    )
    [letter] = await DeadLetters(client, keys=keys).read("fatal")
    assert letter.reason == "max_deliveries"
    assert letter.detail == "delivered 6 times without an outcome"
    listed = json.loads(run_cli(*cli_args, "dlq", "list", "fatal", "--json").stdout)
    assert [(x["reason"], x["detail"]) for x in listed] == [
        ("max_deliveries", "delivered 6 times without an outcome")
    ]
    assert "detail" not in listed[0]["fields"]
    table = run_cli(*cli_args, "dlq", "list", "fatal", "--limit", "5").stdout
    assert "max_deliveries" in table and "delivered" in table  # (rich may wrap the rest)
    shown = json.loads(run_cli(*cli_args, "dlq", "show", "fatal", letter_id.decode()).stdout)
    assert shown["detail"] == "delivered 6 times without an outcome"


async def test_submit_with_a_run_id_of_ones_own_can_be_sent_again(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys
) -> None:
    """The shell's retry recipe: the same command again is the same run, enqueued once."""
    first = run_cli(*cli_args, "submit", "triage", "hello", "--session", "k", "--run-id", "own-1")
    again = run_cli(*cli_args, "submit", "triage", "hello", "--session", "k", "--run-id", "own-1")
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert first.stdout.strip() == again.stdout.strip() == "own-1"
    other = run_cli(*cli_args, "submit", "triage", "other", "--run-id", "own-1")
    assert other.returncode == 1 and "exists already" in other.stderr
    assert await client.xlen(keys.inbox("triage")) == 1


async def test_dlq_list_prints_a_letters_texts_literally(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys
) -> None:
    """A run's error often quotes a model's words: "[/INST]" is text, not terminal markup."""
    error = "model said [/INST] then [bold red]x[/]"
    await client.xadd(
        keys.dlq("fatal"),
        {"reason": "failed", "detail": "[link=http://e]y[/link]", "error": error, "task_id": "t"},
    )
    listed = run_cli(*cli_args, "dlq", "list", "fatal", env={"COLUMNS": "400"})
    assert listed.returncode == 0, listed.stderr
    assert "[/INST]" in listed.stdout and "[bold red]x[/]" in listed.stdout
    assert "[link=http://e]y[/link]" in listed.stdout


async def test_a_letter_with_unreadable_figures_is_still_listed(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys
) -> None:
    """A letter written by another tool with a count that is not a number is listed (its
    figure kept as text), not a crash of every reader of the stream."""
    await client.xadd(
        keys.dlq("fatal"),
        {"reason": "failed", "deliveries": "abc", "attempts": "1e400", "failed_at": "soon"},
    )
    [letter] = await DeadLetters(client, keys=keys).read("fatal")
    assert (letter.deliveries, letter.attempts, letter.failed_at) == (0, 0, 0)
    assert letter.extra == {"deliveries": "abc", "attempts": "1e400", "failed_at": "soon"}
    listed = run_cli(*cli_args, "dlq", "list", "fatal")
    assert listed.returncode == 0, listed.stderr
    assert "failed" in listed.stdout
