"""A TLS-terminating TCP proxy, run as its own process by tests/servers.py (start_tls_proxy).

The Kafka broker the tests run (Tansu 0.6) has no TLS listener, so the TLS tests put this in front of it,
as a TLS load balancer sits in front of brokers: mlplat's Kafka clients then speak real TLS (certificate
checks, client certificates) to a real broker.

usage: python tests/tls_proxy.py LISTEN_PORT TARGET_PORT CERT KEY [CLIENT_CA]
With CLIENT_CA, a client must present a certificate that CA signed (mutual TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except OSError:  # either side went away (ssl.SSLError is an OSError): close the other
        pass
    finally:
        writer.close()


async def main(argv: list[str]) -> None:
    listen, target, cert, key = int(argv[0]), int(argv[1]), argv[2], argv[3]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if len(argv) > 4:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(argv[4])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", listen, ssl=context)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
