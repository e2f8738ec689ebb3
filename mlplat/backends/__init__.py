"""External systems behind small protocols, each with an embedded and a production implementation."""


def compact(value: bytes | bytearray | memoryview) -> bytes:
    """A copy of exactly len(value) bytes, for values an embedded backend keeps.

    `bytes(b)` returns b itself, and orjson's output keeps its whole 4 KiB write buffer (orjson 3.10+), so a
    store holding serialised values as given would hold 4 KiB for each; found by `mlplat bench ingest --big`.
    """
    return bytes(memoryview(value))
