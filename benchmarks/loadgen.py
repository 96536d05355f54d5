"""A small HTTP/1.1 load generator for the serving benchmarks (asyncio streams, keep-alive).

Why not httpx: on a 2-core machine the client shares the CPUs with the server, and httpx spends
~0.3 ms of Python per request; this client spends a small fraction of that, so the server's
numbers are less distorted by the tool that measures them.

Two ways to drive a server:
    closed_loop(...)  `concurrency` workers send back to back (throughput at a concurrency)
    open_loop(...)    requests *start* at a fixed rate whatever the server does (overload);
                      latency is counted from the scheduled start, so a slow server cannot hide
                      its queueing by slowing the client down (no coordinated omission)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def run_client(coro: Any) -> Any:
    """Run a load coroutine the way that distorts the measurement least: on uvloop when it is
    installed (a C event loop: less of the client's own lateness, `start_lag`, on a machine
    whose cores it shares with the server) and with the collector paused (the client's
    objects are latencies and replies, no cycles; a pause for a full collection would delay
    every request in flight and be counted against the server)."""
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return runner(coro)
    finally:
        gc.enable()
        gc.unfreeze()


KEEPALIVE_S = 4.0  # reuse an idle connection only this long (the server keeps it 5 s)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection (no TLS, no pipelining)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> Reply:
        if self.writer is None:
            await self._open()
        assert self.reader is not None and self.writer is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            self.writer.write(head.encode() + body)
            status_line = await self.reader.readuntil(b"\r\n")
            headers: dict[str, str] = {}
            while True:
                line = await self.reader.readuntil(b"\r\n")
                if line == b"\r\n":
                    break
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            if headers.get("transfer-encoding") == "chunked":
                chunks = []
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                    chunks.append(await self.reader.readexactly(size + 2))
                    if size == 0:
                        break
                data = b"".join(c[:-2] for c in chunks)
            else:
                data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            self.close()
            raise
        if headers.get("connection") == "close":
            self.close()
        return Reply(int(status_line.split()[1]), headers, data)


@dataclass
class Run:
    """What a load run saw: latencies (s) per status, and how long it ran."""

    latencies: dict[int, list[float]] = field(default_factory=dict)
    failures: Counter = field(default_factory=Counter)  # transport errors by type
    retry_after: list[str] = field(default_factory=list)
    start_lag: list[float] = field(default_factory=list)  # open loop: late start (s), client-side
    elapsed: float = 0.0

    def add(self, status: int, seconds: float, reply: Reply | None = None) -> None:
        self.latencies.setdefault(status, []).append(seconds)
        if reply is not None and "retry-after" in reply.headers:
            self.retry_after.append(reply.headers["retry-after"])

    def count(self, status: int | None = None) -> int:
        if status is None:
            return sum(len(v) for v in self.latencies.values())
        return len(self.latencies.get(status, []))

    def statuses(self) -> dict[int, int]:
        return {s: len(v) for s, v in sorted(self.latencies.items())}

    def percentile_ms(self, q: float, status: int = 200) -> float:
        values = self.latencies.get(status, [])
        return float(1e3 * np.percentile(values, q)) if values else float("nan")

    def rate(self, status: int = 200) -> float:
        return self.count(status) / self.elapsed if self.elapsed else 0.0


async def closed_loop(
    host: str,
    port: int,
    path: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    content_type: str = "application/json",
    warmup: int = 2,
) -> Run:
    """`concurrency` connections, each sending the next request as soon as one returns."""
    run = Run()
    conns = [Connection(host, port) for _ in range(concurrency)]
    for conn in conns:
        for _ in range(warmup):
            await conn.request("POST", path, body, content_type)
    deadline = time.perf_counter() + seconds

    async def worker(conn: Connection) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                reply = await conn.request("POST", path, body, content_type)
            except (OSError, asyncio.IncompleteReadError) as exc:
                run.failures[type(exc).__name__] += 1
                continue
            run.add(reply.status, time.perf_counter() - t0, reply)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    run.elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    return run


async def open_loop(
    host: str,
    port: int,
    path: str,
    body: bytes,
    rate: float,
    seconds: float,
    content_type: str = "application/json",
    timeout: float = 70.0,
    sent: dict[str, float] | None = None,
) -> Run:
    """Start `rate` requests per second for `seconds`, each on a free (or new) connection.

    Latency counts from the request's scheduled start. Requests still unanswered after
    `timeout` count as status 0. `sent["t"]` is set to perf_counter() once the last request
    has been started (before the answers are in).
    """
    run = Run()
    idle: list[tuple[Connection, float]] = []  # (connection, when it was freed)
    tasks: list[asyncio.Task] = []

    def connection() -> Connection:
        """The most recently freed connection still inside the keep-alive window, else a new
        one (what httpx and urllib3 do: the server closes idle connections after its
        keep-alive timeout, uvicorn's 5 s, and a request sent on one of those fails)."""
        now = time.perf_counter()
        while idle:
            conn, freed = idle.pop()
            if now - freed < KEEPALIVE_S:
                return conn
            conn.close()
        return Connection(host, port)

    async def one(scheduled: float) -> None:
        run.start_lag.append(time.perf_counter() - scheduled)  # the client's own lateness
        conn = connection()
        try:
            reply = await asyncio.wait_for(conn.request("POST", path, body, content_type), timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            conn.close()
            run.failures[type(exc).__name__] += 1
            run.add(0, time.perf_counter() - scheduled)
            return
        run.add(reply.status, time.perf_counter() - scheduled, reply)
        idle.append((conn, time.perf_counter()))

    start = time.perf_counter()
    interval, i = 1.0 / rate, 0
    while True:
        scheduled = start + i * interval
        if scheduled - start >= seconds:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
        i += 1
    if sent is not None:
        sent["t"] = time.perf_counter()
    await asyncio.gather(*tasks)
    run.elapsed = seconds
    for conn, _ in idle:
        conn.close()
    return run


def markdown_table(header: str, rows: list[list[Any]]) -> str:
    """A Markdown table: `header` as 'name | name:r | ...' (':r' = right-aligned), then rows."""
    names = [h.strip() for h in header.split("|")]
    head = "| " + " | ".join(n.removesuffix(":r") for n in names) + " |"
    rule = "|" + "|".join("---:" if n.endswith(":r") else "---" for n in names) + "|"
    return "\n".join([head, rule, *("| " + " | ".join(map(str, r)) + " |" for r in rows)])
