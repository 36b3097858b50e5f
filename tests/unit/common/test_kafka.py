from __future__ import annotations

import pytest
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    RecordTooLargeError,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from libs.common.kafka import BrokerUnavailable, _partition_of, dead_letter_topic, is_transient


@pytest.mark.parametrize(
    "error",
    [KafkaConnectionError(), KafkaTimeoutError(), NotLeaderForPartitionError(), BrokerUnavailable("x"),
     OperationalError("SELECT 1", {}, Exception("database is locked")), ConnectionRefusedError(), TimeoutError()],
)
def test_unreachable_database_or_broker_is_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [ValueError("bad record"), KeyError("x"), IntegrityError("INSERT", {}, Exception("unique")),
     CommitFailedError("rebalanced"), RecordTooLargeError()],
)
def test_a_bad_record_or_a_lost_group_is_not_transient(error):
    assert not is_transient(error)


# murmur2 values from Apache Kafka's own test vectors (clients UtilsTest), as signed Java ints.
JAVA_MURMUR2 = {b"21": -973932308, b"foobar": -790332482}


@pytest.mark.parametrize("partitions", [1, 3, 8, 12])
def test_partition_placement_matches_the_java_clients_default_partitioner(partitions):
    for key, java_hash in JAVA_MURMUR2.items():
        assert _partition_of(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions


def test_person_keys_spread_over_every_partition():
    assert len({_partition_of(f"u-{i}".encode(), 8) for i in range(200)}) == 8


def test_each_consumer_group_has_its_own_dead_letter_topic():
    assert dead_letter_topic("funnel") == "shoploop.dlq.funnel.v1"
    assert dead_letter_topic("funnel") != dead_letter_topic("segmentation")
