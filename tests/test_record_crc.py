"""The consumers' CRC32C check (quax_faust/record_crc.py): every whole v2 batch of a fetched record
set is checked with google-crc32c before aiokafka reads it; a corrupted byte anywhere in a batch's
CRC-covered part is caught; a trailing partial batch is left, as aiokafka leaves it. Real batches
built by aiokafka's own builder, read through aiokafka's own fetcher classes."""

from __future__ import annotations

import os

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from quax_faust import record_crc


def batch(values: list[bytes], base_offset: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 30)
    for k, value in enumerate(values):
        builder.append(k, timestamp=None, key=b"run", value=value, headers=[])
    data = bytearray(builder.build())
    data[:8] = base_offset.to_bytes(8, "big")  # batches follow each other in a record set
    return bytes(data)


def records_read(data: bytes) -> list[bytes]:
    """What aiokafka's fetcher yields for a partition's record set, as the workers' consumers get it."""
    records = fetcher.MemoryRecords(data)
    partition = fetcher.PartitionRecords(TopicPartition("t", 0), records, None, 0, None, None, False, 0)
    return [r.value for r in partition]


@pytest.fixture(scope="module", autouse=True)
def installed():
    record_crc.install()
    assert record_crc.installed() and record_crc.consumer_options() == {"check_crcs": False}


def test_whole_batches_are_checked_and_read_unchanged():
    values = [os.urandom(3 << 20), os.urandom(1000)]
    data = batch(values[:1]) + batch(values[1:], base_offset=1)
    assert record_crc.check_record_set(data) == 2
    assert records_read(data) == values


@pytest.mark.parametrize("where", [21, 61, 1 << 20, -1])  # attributes, a record header, the value, the end
def test_a_corrupted_byte_is_caught_before_a_record_is_read(where):
    data = bytearray(batch([os.urandom(2 << 20)]))
    data[where] ^= 0x01
    with pytest.raises(CorruptRecordException, match="Invalid CRC32C of the record batch at offset 0"):
        record_crc.check_record_set(bytes(data))
    with pytest.raises(CorruptRecordException):
        records_read(bytes(data))


def test_a_corrupted_second_batch_is_caught_and_named_by_its_offset():
    data = bytearray(batch([b"a" * 100]) + batch([b"b" * 100], base_offset=7))
    data[-3] ^= 0x80
    with pytest.raises(CorruptRecordException, match="at offset 7"):
        records_read(bytes(data))


def test_a_trailing_partial_batch_is_left_for_the_next_fetch():
    first, second = batch([b"x" * 5000]), batch([b"y" * 5000], base_offset=1)
    data = first + second[:len(second) // 2]  # a fetch cut at its byte limit
    assert record_crc.check_record_set(data) == 1
    assert records_read(data) == [b"x" * 5000]
