"""The validated topic: what ingest accepted, for streaming inference to read without parsing it again.

While ingest stores a batch (and before it commits), it publishes the accepted rows of each source
partition to `<topic>.validated`, to the partition of the same number: an entity's events stay in one
partition, in order, as streaming's windows need. A message is an Arrow IPC stream of at most
`CHUNK_ROWS` rows: the validated columns plus `_offset`, each row's offset on the source topic, so that a
streaming dead letter keeps the key it had when streaming read the source topic; its schema metadata
names the source partition and counts the batch's invalid and redelivered events. A crash before
ingest's commit publishes the batch again: the rows come twice, and streaming's predictions keep their
ids (at-least-once, keyed), as on any redelivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import pyarrow as pa

from mlplat.backends.bus import Message, TopicPartition
from mlplat.backends.bus.memory import partition_for_key

SUFFIX = ".validated"
CHUNK_ROWS = 500
OFFSET = "_offset"


def validated_topic(topic: str) -> str:
    return topic + SUFFIX


@cache
def key_for_partition(partition: int, partitions: int) -> bytes:
    """A message key the default partitioner (both bus backends use it) sends to `partition`."""
    target = partition % partitions
    i = 0
    while partition_for_key(key := f"p{target}.{i}".encode(), partitions) != target:
        i += 1
    return key


@dataclass(frozen=True)
class ValidatedChunk:
    source: TopicPartition  # where the rows were read by ingest
    rows: pa.Table  # validated columns and _offset
    invalid: int = 0  # events of the batch that became dead letters
    redelivered: int = 0  # identical copies left out

    def to_bytes(self) -> bytes:
        meta = {b"topic": self.source.topic.encode(), b"partition": str(self.source.partition).encode(),
                b"invalid": str(self.invalid).encode(), b"redelivered": str(self.redelivered).encode()}
        table = self.rows.replace_schema_metadata(meta)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return bytes(sink.getvalue())

    @classmethod
    def from_message(cls, message: Message) -> ValidatedChunk:
        """Raises ValueError naming the message if it is not a validated chunk."""
        try:
            table = pa.ipc.open_stream(message.value).read_all()
            meta = table.schema.metadata or {}
            return cls(TopicPartition(meta[b"topic"].decode(), int(meta[b"partition"])),
                       table.replace_schema_metadata(None), int(meta[b"invalid"]), int(meta[b"redelivered"]))
        except (pa.ArrowInvalid, KeyError, ValueError) as e:
            raise ValueError(f"{message.topic}:{message.partition}:{message.offset} is not a validated chunk: "
                             f"{e!r}") from None


def chunks(source: TopicPartition, rows: pa.Table, invalid: int, redelivered: int) -> list[ValidatedChunk]:
    """A partition's accepted rows in chunks of at most CHUNK_ROWS (the counts go with the first)."""
    out = [ValidatedChunk(source, rows.slice(start, CHUNK_ROWS), invalid if not start else 0,
                          redelivered if not start else 0) for start in range(0, rows.num_rows, CHUNK_ROWS)]
    if not out and (invalid or redelivered):
        out.append(ValidatedChunk(source, rows, invalid, redelivered))
    return out
