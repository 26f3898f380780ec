"""Key names: one builder, a configurable prefix, shared hash tags for atomic groups."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from runtime import KeyNameError, Keys
from runtime.keys import hash_tag


def slot(key: str) -> int:
    return int(key_slot(key.encode()))


def test_groups_share_a_cluster_slot() -> None:
    keys = Keys("aw")
    inbox = [keys.inbox("triage"), keys.delayed("triage"), keys.dlq("triage")]
    inbox.append(keys.idempotency("triage", "order-17"))
    run = [keys.run("r-1"), keys.run_events("r-1"), keys.run_journal("r-1")]
    session = [keys.session("s-1"), keys.session_items("s-1"), keys.session_lease("s-1")]
    for group in (inbox, run, session):
        assert len({slot(key) for key in group}) == 1, group
        assert len({hash_tag(key) for key in group}) == 1
    # different agents and runs spread over the cluster
    spread = {slot(Keys("aw").inbox(f"agent{i}")) for i in range(50)}
    assert len(spread) > 40


def test_names_and_partitions() -> None:
    keys = Keys("acme:prod")
    assert keys.inbox("triage") == "acme:prod:{inbox:triage}"
    assert keys.inbox("triage", partition=3) == "acme:prod:{inbox:triage:3}"
    assert keys.dlq("triage") == "acme:prod:{inbox:triage}:dlq"
    assert keys.session_items("c1") == "acme:prod:{session:c1}:items"
    assert keys.events() == "acme:prod:events"
    assert hash_tag("plain") == "plain"
    assert hash_tag("a:{}:b") == "a:{}:b"  # an empty tag hashes the whole key, as Redis does


@pytest.mark.parametrize("bad", ["", "a b", "a{b", "b}", "a:b", "x" * 201, "tab\t", "nul\x00"])
def test_bad_names_are_refused(bad: str) -> None:
    keys = Keys()
    for build in (keys.inbox, keys.run, keys.session):
        with pytest.raises(KeyNameError):
            build(bad)
    with pytest.raises(ValueError, match="must be 1-200 characters"):
        keys.idempotency("triage", bad)


@pytest.mark.parametrize("bad", ["", "{aw}", "a b", ":aw", "aw:", "a::b"])
def test_bad_prefixes_are_refused(bad: str) -> None:
    with pytest.raises(KeyNameError):
        Keys(bad)


def test_negative_partition_refused() -> None:
    with pytest.raises(KeyNameError):
        Keys().inbox("a", partition=-1)


def test_a_metric_series_and_its_rollup_share_a_cluster_slot() -> None:
    keys = Keys("aw")
    series = keys.metric_series("run_latency", "host:1:0:max:agent=triage")
    assert series == "aw:ts:{run_latency:host:1:0:max:agent=triage}"
    assert (
        hash_tag(series) == hash_tag(series + ":rollup") == "run_latency:host:1:0:max:agent=triage"
    )
    assert slot(series) == slot(series + ":rollup")
    with pytest.raises(KeyNameError):
        keys.metric_series("run_latency", "a{b")
