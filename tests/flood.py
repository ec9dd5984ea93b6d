"""A flood of SSE subscriptions from one address, run as its own process by the limit tests
(so its work does not share a GIL with the latency the test measures).

    python -m tests.flood PORT SOURCE_ADDRESS CONCURRENCY TOKEN_FILE [PER_SECOND]

Opens one stream per line of TOKEN_FILE (a token per line: the same one repeated, or one
each), CONCURRENCY at a time, at most PER_SECOND a second (0: as fast as it can),
keeps every stream that was admitted open and reads it,
prints {"started": true} as its first connection goes out, then one JSON line
{"statuses", "open", "replaced"} once every stream was tried (and again, fresh, for each
line it reads on stdin), and closes everything at stdin's end.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter


class Flood:
    def __init__(self, port: int, source: str) -> None:
        self.port = port
        self.source = source
        self.statuses: Counter[int] = Counter()
        self.open = 0
        self.replaced = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.Task[None]] = []

    async def one(self, token: str) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=(self.source, 0)
        )
        request = (
            f"GET /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        writer.write(request.encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split()[1])
        self.statuses[status] += 1
        if status != 200:
            writer.close()
            return
        self.open += 1
        self.writers.append(writer)
        self.readers.append(asyncio.ensure_future(self.read(reader)))

    async def read(self, reader: asyncio.StreamReader) -> None:
        seen = b""
        try:
            while chunk := await reader.read(65536):
                seen = (seen + chunk)[-4096:]
                if b"event: replaced" in seen:
                    self.replaced += 1
                    seen = b""
        except OSError:
            pass
        self.open -= 1

    def summary(self) -> str:
        statuses = {str(k): v for k, v in sorted(self.statuses.items())}
        return json.dumps({"statuses": statuses, "open": self.open, "replaced": self.replaced})


async def main(
    port: int, source: str, concurrency: int, tokens: list[str], per_second: float
) -> None:
    flood = Flood(port, source)
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for i, token in enumerate(tokens):
        queue.put_nowait((i, token))
    loop = asyncio.get_running_loop()
    print(json.dumps({"started": True}), flush=True)
    start = loop.time()

    async def worker() -> None:
        while not queue.empty():
            i, token = queue.get_nowait()
            if per_second:
                await asyncio.sleep(max(0.0, start + i / per_second - loop.time()))
            await flood.one(token)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(flood.summary(), flush=True)
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(flood.summary(), flush=True)
    for writer in flood.writers:
        writer.close()


if __name__ == "__main__":
    port, source, concurrency, token_file = sys.argv[1:5]
    per_second = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    with open(token_file) as f:
        tokens = [line.strip() for line in f if line.strip()]
    asyncio.run(main(int(port), source, int(concurrency), tokens, per_second))
