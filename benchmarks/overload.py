"""A bounded overload on loopback, for `bigmodel serve` (tests/test_serve.py runs a short one, `make bench-serve`
the long one): `healthy` clients sending predict requests one after another on their own keep-alive connections,
`slow` slow-loris clients (half trickle their headers, half their body), and a prober asking /healthz on a fresh
connection every 0.2 s; what each got, and the server's resident memory, sampled throughout.

    report = asyncio.run(overload("127.0.0.1", port, body, pid=server_pid, healthy=400, slow=100, seconds=8))
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Report:
    ok: int = 0  # predict answered 200
    busy: int = 0  # predict answered 503 with Retry-After
    busy_without_retry_after: int = 0
    other: dict[int, int] = field(default_factory=dict)  # any other status: count
    late: int = 0  # no answer within the deadline
    dropped: int = 0  # the connection closed before an answer
    slowest_answer_s: float = 0.0
    slow_cut: int = 0  # slow clients the server closed or answered 408
    slow_left_open: int = 0  # slow clients still connected when the run ended
    slowest_cut_s: float = 0.0  # the longest a slow client was kept before being cut
    healthz_ok: int = 0
    healthz_failed: int = 0
    slowest_healthz_s: float = 0.0
    rss_before_mb: float = 0.0
    rss_max_mb: float = 0.0
    client_stall_s: float = 0.0  # the longest this (measuring) event loop ran late: a 0.05 s ticker's worst delay

    @property
    def slowest_answer_net_s(self) -> float:
        """The slowest answer less the measuring loop's own worst stall: a loop that stalls (the host busy with other
        work) reads every answer that arrived meanwhile only when it wakes, and counts the stall as the server's."""
        return max(0.0, self.slowest_answer_s - self.client_stall_s)

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """One HTTP/1.1 response: its status and headers (the body read by its Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers


async def overload(host: str, port: int, body: bytes, pid: int, healthy: int = 400, slow: int = 100,
                   seconds: float = 8.0, deadline: float = 10.0, path: str = "/v1/models/model:predict") -> Report:
    report = Report(rss_before_mb=rss_mb(pid))
    report.rss_max_mb = report.rss_before_mb
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    end = time.monotonic() + seconds

    async def client() -> None:
        reader = writer = None
        try:
            while time.monotonic() < end:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                t = time.monotonic()
                writer.write(request)
                try:
                    status, headers = await asyncio.wait_for(_answer(reader), deadline)
                except TimeoutError:
                    report.late += 1
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    report.dropped += 1
                    writer.close()
                    reader = writer = None
                    continue
                report.slowest_answer_s = max(report.slowest_answer_s, time.monotonic() - t)
                if status == 200:
                    report.ok += 1
                elif status == 503:
                    report.busy += 1
                    report.busy_without_retry_after += "retry-after" not in headers
                    await asyncio.sleep(0.25)  # pressure, not politeness: Retry-After would say 1 s
                else:
                    report.other[status] = report.other.get(status, 0) + 1
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    async def loris(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        opened = time.monotonic()
        # even: the headers one byte at a time; odd: the headers whole, then the body one byte at a time
        trickle = request if i % 2 == 0 else body
        if i % 2:
            writer.write(request[: len(request) - len(body)])
        try:
            for byte in trickle:
                if time.monotonic() > end:
                    report.slow_left_open += 1
                    return
                writer.write(bytes([byte]))
                await writer.drain()
                try:  # an answer (408) or a close, while we trickle
                    got = await asyncio.wait_for(reader.read(1), 0.5)
                except TimeoutError:
                    continue
                report.slow_cut += 1  # b"" (closed) or the first byte of an answer
                report.slowest_cut_s = max(report.slowest_cut_s, time.monotonic() - opened)
                del got
                return
            report.slow_left_open += 1  # sent it all without being cut: the deadline was never enforced
        except ConnectionError:
            report.slow_cut += 1
            report.slowest_cut_s = max(report.slowest_cut_s, time.monotonic() - opened)
        finally:
            writer.close()

    async def prober() -> None:
        probe = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        while time.monotonic() < end:
            t = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
                writer.write(probe)
                status, _ = await asyncio.wait_for(_answer(reader), 2)
                writer.close()
                report.healthz_ok += status == 200
                report.healthz_failed += status != 200
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                report.healthz_failed += 1
            report.slowest_healthz_s = max(report.slowest_healthz_s, time.monotonic() - t)
            await asyncio.sleep(0.2)

    async def memory() -> None:
        while time.monotonic() < end + 1:
            report.rss_max_mb = max(report.rss_max_mb, rss_mb(pid))
            await asyncio.sleep(0.1)

    async def ticker() -> None:
        while time.monotonic() < end + 1:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            report.client_stall_s = max(report.client_stall_s, time.monotonic() - t - 0.05)

    await asyncio.gather(*(client() for _ in range(healthy)), *(loris(i) for i in range(slow)), prober(), memory(),
                         ticker())
    return report
