"""CommittedRelay: outputs outside Kafka (VTP, Hopskotch) get committed reports only, and a
crash before the relay's commit repeats that poll's reports (same keys), nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from mmcross.app.relay import CommittedRelay
from mmcross.brokers.reports import match_to_avro
from tests.helpers import DEADLINE, REPO, create_topics, make_match

pytestmark = pytest.mark.kafka


class Collect:
    """A report sink that keeps what it was given."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.closed = False

    def write(self, matches) -> None:
        self.keys += [m.key for m in matches]

    def close(self) -> None:
        self.closed = True


def _transaction(producer: Producer, topic: str, ids: range, commit: bool) -> list[str]:
    producer.begin_transaction()
    keys = []
    for i in ids:
        m = make_match(i)
        producer.produce(topic, key=m.key.encode(), value=match_to_avro(m))
        keys.append(m.key)
    if commit:
        producer.commit_transaction(30)
    else:
        producer.flush(30)  # the records are on the broker, then aborted
        producer.abort_transaction(30)
    return keys


def _relay_until(relay: CommittedRelay, sink: Collect, count: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while len(sink.keys) < count:
        assert time.monotonic() < deadline, f"relayed {len(sink.keys)} of {count}"
        relay.step(0.2)


def _assigned(relay: CommittedRelay) -> None:
    deadline = time.monotonic() + DEADLINE
    while not relay.wait_assigned(0):
        assert time.monotonic() < deadline, "the relay got no partition"
        relay.step(0.2)


def test_only_committed_reports_are_relayed_once(kafka_broker):
    topic, group = f"reports-{uuid.uuid4().hex[:10]}", f"relay-{uuid.uuid4().hex[:10]}"
    create_topics(kafka_broker, [topic], partitions=2)
    sink = Collect()
    relay = CommittedRelay({"bootstrap.servers": kafka_broker}, topic, group, [sink])
    try:
        _assigned(relay)
        producer = Producer({"bootstrap.servers": kafka_broker,
                             "transactional.id": f"t-{uuid.uuid4().hex}"})
        producer.init_transactions(30)
        committed = _transaction(producer, topic, range(0, 5), commit=True)
        _transaction(producer, topic, range(100, 104), commit=False)
        committed += _transaction(producer, topic, range(5, 8), commit=True)
        _relay_until(relay, sink, len(committed))
        for _ in range(5):  # the aborted records and the markers are never handed over
            relay.step(0.2)
        assert sorted(sink.keys) == sorted(committed)
        assert relay.relayed == len(committed)
    finally:
        relay.close()
    assert sink.closed

    # the group committed what it relayed: a new relay resumes there (not at the end)
    later = _transaction(producer, topic, range(8, 10), commit=True)
    again = Collect()
    relay = CommittedRelay({"bootstrap.servers": kafka_broker}, topic, group, [again])
    try:
        _relay_until(relay, again, len(later))
        for _ in range(5):
            relay.step(0.2)
    finally:
        relay.close()
    assert sorted(again.keys) == sorted(later)


def test_a_crash_before_the_relay_commit_repeats_that_poll_only(kafka_broker, tmp_path: Path):
    topic, group = f"reports-{uuid.uuid4().hex[:10]}", f"relay-{uuid.uuid4().hex[:10]}"
    create_topics(kafka_broker, [topic], partitions=1)
    first = Collect()
    relay = CommittedRelay({"bootstrap.servers": kafka_broker}, topic, group, [first], batch=4)
    producer = Producer({"bootstrap.servers": kafka_broker,
                         "transactional.id": f"t-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    try:
        _assigned(relay)
        early = _transaction(producer, topic, range(0, 4), commit=True)
        _relay_until(relay, first, 4)  # relayed and committed
    finally:
        relay.close()
    late = _transaction(producer, topic, range(4, 12), commit=True)

    handed = tmp_path / "handed.jsonl"
    script = textwrap.dedent(f"""
        import json
        from mmcross.app.relay import CommittedRelay

        class Lines:
            def write(self, matches):
                with open({str(handed)!r}, "a") as f:
                    f.write(json.dumps([m.key for m in matches]) + "\\n")
            def close(self):
                pass

        relay = CommittedRelay({{"bootstrap.servers": {kafka_broker!r}}}, {topic!r},
                               {group!r}, [Lines()], batch=4, instance_id="me")
        while True:
            relay.step(0.2)
    """)
    env = {**os.environ, "MMCROSS_CRASH_AT": "relay_commit:2"}  # killed in its 2nd poll
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, timeout=DEADLINE,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    polls = [json.loads(line) for line in handed.read_text().splitlines()]
    assert len(polls) == 2 and sum(polls, []) == late[:len(polls[0]) + len(polls[1])]

    after = Collect()  # the same static member: takes the partition back at once
    relay = CommittedRelay({"bootstrap.servers": kafka_broker}, topic, group, [after],
                           instance_id="me")
    try:
        _relay_until(relay, after, len(late) - len(polls[0]))
        for _ in range(3):
            relay.step(0.2)
    finally:
        relay.close()
    # the first poll was committed before the kill; the second is handed over again
    assert after.keys == late[len(polls[0]):]
    assert not set(after.keys) & set(early + polls[0])
