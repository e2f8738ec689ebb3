"""The embedded backends keep what they hold at its own size: orjson's output carries a 4 KiB buffer, and
holding it as given made the memory hot store cost 4 KiB per entity (a 1 GiB upload: +700 MB of RSS)."""

from __future__ import annotations

import tracemalloc

import orjson
import pyarrow as pa

from mlplat.backends.bus.memory import MemoryBus
from mlplat.backends.hotstore.memory import MemoryHotStore
from mlplat.features.definitions import catalog_from_dict
from mlplat.features.online import write_latest

VALUES = 2000
PER_VALUE_LIMIT = 512  # a 40-byte value and its Message; orjson's buffer alone is 4096


def orjson_values() -> list[bytes]:
    return [orjson.dumps({"t": i, "f": {"clicks": i}}) for i in range(VALUES)]


async def test_the_memory_bus_keeps_each_message_at_its_own_size() -> None:
    bus = MemoryBus()
    await bus.connect()
    await bus.create_topic("t", partitions=1)
    tracemalloc.start()
    try:
        await bus.publish_many("t", [(None, v) for v in orjson_values()])  # the values die after the call
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await bus.aclose()
    assert held < VALUES * PER_VALUE_LIMIT, f"{held / VALUES:.0f} bytes held per message"


async def test_the_memory_hot_store_keeps_each_value_at_its_own_size() -> None:
    store = MemoryHotStore()
    tracemalloc.start()
    try:
        await store.set_unless_older([(f"k{i}", i, v) for i, v in enumerate(orjson_values())])
        pipe = store.pipeline()
        for i, v in enumerate(orjson_values()):
            pipe.set(f"p{i}", v)
        await pipe.execute()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await store.aclose()
    assert held < 2 * VALUES * PER_VALUE_LIMIT, f"{held / VALUES / 2:.0f} bytes held per value"


async def test_writing_an_uploads_latest_values_never_holds_a_buffer_per_entity() -> None:
    """The peak, not only what is kept: freed 4 KiB buffers stay in the process (glibc keeps them)."""
    fs = catalog_from_dict({"entities": {"user": {"key": "user_id"}}, "feature_sets": {"s": {
        "entity": "user", "features": [{"name": "clicks", "type": "int"}]}}}).feature_sets["s"]
    rows = pa.table({"entity_id": [f"u{i}" for i in range(VALUES)],
                     "event_time": pa.array(range(VALUES), pa.timestamp("us", tz="UTC")),
                     "clicks": pa.array(range(VALUES), pa.int64())})
    store = MemoryHotStore()
    tracemalloc.start()
    try:
        assert await write_latest(store, fs, rows) == VALUES
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await store.aclose()
    assert peak < VALUES * 2 * PER_VALUE_LIMIT, f"{peak / VALUES:.0f} bytes at the peak per entity"
