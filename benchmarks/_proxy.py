"""`python -m benchmarks._proxy HOST:PORT`: a trio TCP proxy that only copies bytes.

The floor for the time-to-first-token benchmark: what one more Python/trio
process between client and upstream costs on this machine (two more hops, two
more wake-ups), with no HTTP, routing or translation. Prints its port, then serves.
"""

from __future__ import annotations

import sys

import trio


async def _copy(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(sink)


async def _serve(host: str, port: int) -> None:
    async def handle(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream(host, port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_copy, client, upstream)
            nursery.start_soon(_copy, upstream, client)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(handle, listeners)


if __name__ == "__main__":
    target_host, _, target_port = sys.argv[1].rpartition(":")
    trio.run(_serve, target_host, int(target_port))
