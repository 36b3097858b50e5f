from __future__ import annotations

import sqlite3

import pytest
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    RecordTooLargeError,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from libs.common.kafka import (
    BrokerUnavailable,
    _partition_of,
    classify_error,
    dead_letter_topic,
    is_transient,
)


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


class _PostgresError(Exception):
    """Stands for a DB-API error carrying a SQLSTATE, as asyncpg's do."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _wrapped(orig: Exception, kind: type = OperationalError) -> Exception:
    return kind("INSERT ...", {}, orig)


@pytest.mark.parametrize(("error", "kind"), [
    (_wrapped(sqlite3.OperationalError("database is locked")), "busy"),
    (_wrapped(sqlite3.OperationalError("unable to open database file")), "outage"),
    (_wrapped(sqlite3.OperationalError("disk I/O error")), "outage"),
    # Caused by the data: retrying cannot help, so it must end in the dead-letter topic, not in endless retries.
    (_wrapped(sqlite3.OperationalError("malformed JSON")), "poison"),
    (_wrapped(sqlite3.OperationalError("string or blob too big")), "poison"),
    (_wrapped(sqlite3.InterfaceError("Error binding parameter 1: type 'dict' is not supported"), InterfaceError),
     "poison"),
    (_wrapped(_PostgresError("40P01"), DBAPIError), "busy"),
    (_wrapped(_PostgresError("40001"), DBAPIError), "busy"),
    (_wrapped(_PostgresError("08006"), DBAPIError), "outage"),
    (_wrapped(_PostgresError("57P01"), DBAPIError), "outage"),
    (_wrapped(_PostgresError("22P02"), DBAPIError), "poison"),
    (_wrapped(ConnectionResetError("reset by peer"), InterfaceError), "outage"),
    (KafkaConnectionError(), "outage"),
    (RecordTooLargeError(), "poison"),
])
def test_errors_are_told_apart_as_outage_lock_or_poison(error, kind):
    assert classify_error(error) == kind


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
