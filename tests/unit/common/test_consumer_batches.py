"""A fetched batch, as the consumer runtime applies it: offsets to commit, and the part a rebalance leaves us."""

from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition

from libs.common.kafka import _Fetched


def record(partition: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic="t", partition=partition, offset=offset, timestamp=0, timestamp_type=0, key=None,
                          value=b"{}", checksum=None, serialized_key_size=0, serialized_value_size=2, headers=())


def by_partition(*records: ConsumerRecord) -> dict[TopicPartition, list[ConsumerRecord]]:
    grouped: dict[TopicPartition, list[ConsumerRecord]] = {}
    for one in records:
        grouped.setdefault(TopicPartition(one.topic, one.partition), []).append(one)
    return grouped


def test_offsets_to_commit_are_one_past_each_partitions_last_record():
    fetched = _Fetched(by_partition(record(0, 7), record(1, 3), record(0, 8), record(1, 4)))
    assert fetched.next_offsets() == {TopicPartition("t", 0): 9, TopicPartition("t", 1): 5}


def test_records_of_partitions_taken_by_a_rebalance_are_left_out():
    kept, taken = record(0, 7), record(1, 3)
    error = ValueError("not an event")
    fetched = _Fetched(by_partition(kept, taken), decoded=[(kept, "event")], undecodable=[(taken, error)])
    assert fetched.of({TopicPartition("t", 0), TopicPartition("t", 1)}) is fetched
    mine = fetched.of({TopicPartition("t", 0)})
    assert (mine.records, mine.decoded, mine.undecodable) == ([kept], [(kept, "event")], [])
    assert mine.next_offsets() == {TopicPartition("t", 0): 8}
    assert fetched.of(set()).records == [] and fetched.of(set()).next_offsets() == {}
