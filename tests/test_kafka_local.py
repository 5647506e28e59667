"""The local Apache Kafka broker of scripts/kafka_local.py, exercised with real clients.

confluent_kafka (librdkafka) produces and consumes; offsets are checked through the
AdminClient, an independent path from the consumer that committed them.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import gcn_kafka
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from gcn_kafka.core import get_config

from tests.helpers import read_topic
from tests.kafka_fixture import kafka_local, skip_or_fail

POLL_DEADLINE = 300.0  # s, bound of every consume loop (a hang guard)


def _new_topic(bootstrap: str, partitions: int = 3) -> str:
    name = f"mmcross-test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    futures[name].result(timeout=30)
    return name


def _produce(bootstrap: str, topic: str, values: range, producer: Producer | None = None) -> None:
    """Produce ``str(i)`` for i in values with key ``i % 7``; fail on any delivery error."""
    producer = producer or Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    for i in values:
        producer.produce(topic, key=str(i % 7), value=str(i), on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0, "messages left undelivered"
    assert errors == []


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })


def _consume(consumer: Consumer, count: int) -> list:
    """Poll until ``count`` messages arrived (or the deadline passed); return them."""
    messages = []
    deadline = time.monotonic() + POLL_DEADLINE
    while len(messages) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        messages.append(msg)
    return messages


def _commit_exact(consumer: Consumer, messages: list) -> dict[int, int]:
    """Commit, per partition, the offset after the last of ``messages``; return {p: offset}."""
    next_offsets: dict[int, int] = {}
    for msg in messages:
        next_offsets[msg.partition()] = max(next_offsets.get(msg.partition(), 0), msg.offset() + 1)
    topic = messages[0].topic()
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in next_offsets.items()],
                    asynchronous=False)
    return next_offsets


_COORDINATOR_BUSY = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                     KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT,
                     KafkaError._TRANSPORT}


def _group_offsets(bootstrap: str, group: str, topic: str, partitions: int = 3
                   ) -> dict[int, int]:
    """Committed offsets fetched from the group coordinator by a consumer that never
    subscribes (AdminClient.list_consumer_group_offsets can crash librdkafka 2.16 while the
    coordinator is still loading, so it is not used here)."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                       "enable.auto.commit": False})
    deadline = time.monotonic() + POLL_DEADLINE
    try:
        while True:  # right after a restart the coordinator may still be moving or loading
            try:
                committed = reader.committed(
                    [TopicPartition(topic, p) for p in range(partitions)], timeout=30)
                break
            except KafkaException as exc:
                if exc.args[0].code() not in _COORDINATOR_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        reader.close()
    return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}


def _values(messages: list) -> list[int]:
    return [int(m.value()) for m in messages]


def _total_messages(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = _consumer(bootstrap, f"watermarks-{uuid.uuid4().hex}")
    try:
        return sum(hi - lo for lo, hi in (
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in range(partitions)))
    finally:
        consumer.close()


def test_random_cluster_id_is_16_bytes_urlsafe_base64() -> None:
    text = kafka_local.random_cluster_id()
    assert len(text) == 22 and not text.startswith("-")
    assert len(base64.urlsafe_b64decode(text + "==")) == 16


@pytest.mark.kafka
def test_topic_created_with_three_partitions(kafka_broker: str) -> None:
    topic = _new_topic(kafka_broker, partitions=3)
    metadata = AdminClient({"bootstrap.servers": kafka_broker}).list_topics(topic, timeout=10)
    assert sorted(metadata.topics[topic].partitions) == [0, 1, 2]


@pytest.mark.kafka
def test_group_consumes_all_and_second_consumer_resumes_from_commit(kafka_broker: str) -> None:
    topic = _new_topic(kafka_broker, partitions=3)
    _produce(kafka_broker, topic, range(1000))
    assert _total_messages(kafka_broker, topic, 3) == 1000
    group = f"g-{uuid.uuid4().hex}"

    first = _consumer(kafka_broker, group)
    first.subscribe([topic])
    head = _consume(first, 400)
    assert len(head) == 400
    committed = _commit_exact(first, head)
    first.close()
    assert _group_offsets(kafka_broker, group, topic) == committed

    second = _consumer(kafka_broker, group)
    second.subscribe([topic])
    tail = _consume(second, 600)
    extra = _consume_nothing_more(second)
    second.close()

    seen = _values(head) + _values(tail)
    assert extra == []
    assert len(seen) == 1000 and sorted(seen) == list(range(1000))  # none lost, none twice
    for msgs in (head, tail):  # order kept within each partition (same key -> same partition)
        for p in range(3):
            in_p = [int(m.value()) for m in msgs if m.partition() == p]
            assert in_p == sorted(in_p)


def _consume_nothing_more(consumer: Consumer) -> list:
    """Poll briefly for messages beyond those expected (there should be none)."""
    extra = []
    for _ in range(4):
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            extra.append(msg)
    return extra


@pytest.mark.kafka
def test_data_and_commits_survive_broker_restart(local_kafka) -> None:
    bootstrap = local_kafka.bootstrap
    topic = _new_topic(bootstrap, partitions=3)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    _produce(bootstrap, topic, range(500), producer)
    group = f"g-{uuid.uuid4().hex}"
    first = _consumer(bootstrap, group)
    first.subscribe([topic])
    head = _consume(first, 200)
    committed = _commit_exact(first, head)
    first.close()

    assert local_kafka.restart() == bootstrap  # same address, same data dir

    assert _group_offsets(bootstrap, group, topic) == committed
    assert _total_messages(bootstrap, topic, 3) == 500
    _produce(bootstrap, topic, range(500, 1000), producer)  # the same idempotent producer
    second = _consumer(bootstrap, group)
    second.subscribe([topic])
    tail = _consume(second, 800)
    second.close()
    seen = _values(head) + _values(tail)
    assert sorted(seen) == list(range(1000))


@pytest.mark.kafka
def test_committed_transaction_survives_a_broker_kill_and_an_open_one_never_shows(
        local_kafka) -> None:
    bootstrap = local_kafka.bootstrap
    topic = _new_topic(bootstrap, partitions=1)
    txn_id = f"t-{uuid.uuid4().hex}"
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=str(i).encode())
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(10, 20):
        producer.produce(topic, value=str(i).encode())
    assert producer.flush(30) == 0  # written to the log, inside a transaction never committed

    assert local_kafka.restart(hard=True) == bootstrap  # SIGKILL, same address and data

    successor = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id})
    successor.init_transactions(60)  # fences the old producer, aborts its open transaction
    assert _values(read_topic(bootstrap, topic)) == list(range(10))


@pytest.mark.kafka
def test_gcn_kafka_consumer_reads_plaintext_local_broker(kafka_broker: str) -> None:
    topic = _new_topic(kafka_broker, partitions=1)
    notices = [{"mission": "test", "n": i} for i in range(5)]
    producer = Producer({"bootstrap.servers": kafka_broker})
    for notice in notices:
        producer.produce(topic, json.dumps(notice).encode())
    assert producer.flush(30) == 0

    # No client_id -> gcn_kafka adds no SASL/OIDC keys; a protocol other than sasl_ssl -> no SSL.
    config = {"bootstrap.servers": kafka_broker, "security.protocol": "PLAINTEXT",
              "auto.offset.reset": "earliest"}
    built = get_config("consumer", config)
    assert "sasl.mechanisms" not in built and "ssl.ca.location" not in built
    assert built["group.id"]  # gcn_kafka makes up a random group id
    consumer = gcn_kafka.Consumer(config=config)
    consumer.subscribe([topic])
    got = [json.loads(m.value()) for m in _consume(consumer, 5)]
    consumer.close()
    assert got == notices


@pytest.mark.kafka
def test_gcn_kafka_config_from_env_points_at_local_broker(kafka_broker: str) -> None:
    topic = _new_topic(kafka_broker, partitions=1)
    producer = Producer({"bootstrap.servers": kafka_broker})
    producer.produce(topic, b"hello")
    assert producer.flush(30) == 0
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_broker, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
           "KAFKA_AUTO_OFFSET_RESET": "earliest", "OTHER": "ignored"}
    config = gcn_kafka.config_from_env(env)
    assert config == {"bootstrap.servers": kafka_broker, "security.protocol": "PLAINTEXT",
                      "auto.offset.reset": "earliest"}
    consumer = gcn_kafka.Consumer(config=config)
    consumer.subscribe([topic])
    got = [m.value() for m in _consume(consumer, 1)]
    consumer.close()
    assert got == [b"hello"]


@pytest.mark.kafka
def test_bad_broker_config_raises_with_kafka_output(tmp_path) -> None:
    try:
        kafka_local.java_executable()
        kafka_local.fetch_jars()
    except kafka_local.KafkaUnavailableError as exc:
        skip_or_fail(str(exc))
    broker = kafka_local.LocalKafka(tmp_path, extra_properties={"num.io.threads": "many"})
    with pytest.raises(kafka_local.LocalKafkaError, match="num.io.threads"):
        broker.start()
    assert not broker.is_running()
