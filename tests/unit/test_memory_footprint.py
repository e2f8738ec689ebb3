"""The embedded backends keep what they hold at its own size: orjson's output carries a 4 KiB buffer, and
holding it as given made the memory hot store cost 4 KiB per entity (a 1 GiB upload: +700 MB of RSS)."""

from __future__ import annotations

import tracemalloc

import orjson

from mlplat.backends.bus.memory import MemoryBus

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
