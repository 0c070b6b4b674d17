"""Transport limits of ``orq api`` (DESIGN §12), with raw sockets against its real server: request headers
over 64 KiB together get 431, and a client that stops sending mid-request is cut after at most 30 s."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from services.api.transport import MAX_HEAD_BYTES, STALL_TIMEOUT_S
from tests.hardening.conftest import Served

KIB = 1024


async def _exchange(served: Served, head: bytes, *, body: bytes = b"", chunk: int = 64 * KIB,
                    timeout: float = 10) -> bytes:
    """Send ``head`` (and ``body``) on a new connection, then read until the server closes or ``timeout``."""
    reader, writer = await asyncio.open_connection(served.host, served.port)
    try:
        data = head + body
        for at in range(0, len(data), chunk):
            writer.write(data[at : at + chunk])
            try:
                await writer.drain()
            except ConnectionError:
                break  # the server refused early and stopped reading: read its answer
        answer = b""
        try:
            async with asyncio.timeout(timeout):
                while block := await reader.read(65536):
                    answer += block
                    if b"\r\n\r\n" in answer and _complete(answer):
                        break
        except ConnectionError:
            pass
        return answer
    finally:
        writer.close()


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def _error(answer: bytes) -> dict[str, str]:
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    error: dict[str, str] = body["error"]
    return error


def _get(path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: orq.test", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_headers_over_64_kib_together_get_431(served: Served) -> None:
    assert MAX_HEAD_BYTES == 64 * KIB
    many = [(f"X-Filler-{n}", "v" * 1000) for n in range(70)]  # ~70 KiB in headers of 1 KB each
    answer = await _exchange(served, _get("/healthz", many))
    assert _status(answer) == 431, answer[:300]
    assert _error(answer)["code"] == "headers_too_large"
    fine = [(f"X-Filler-{n}", "v" * 1000) for n in range(55)]  # ~55 KiB: under the limit
    assert _status(await _exchange(served, _get("/healthz", fine))) == 200


async def test_one_huge_header_is_refused_before_it_is_read_whole(served: Served) -> None:
    head = _get("/healthz", [("X-Huge", "h" * (8 * 1024 * KIB))])
    started = time.monotonic()
    answer = await _exchange(served, head)
    assert _status(answer) == 431, answer[:300]
    assert time.monotonic() - started < 10
    async with httpx.AsyncClient() as client:  # and the server goes on serving
        assert (await client.get(served.base + "/healthz")).status_code == 200


async def test_a_client_that_stops_sending_is_cut_within_30_s(served: Served) -> None:
    assert STALL_TIMEOUT_S == 30
    admin = f"Authorization: Bearer {served.settings.admin_token}\r\n".encode()
    # The app has checked the key and waits for the body (100 bytes declared, 2 sent).
    stalled_body = b"POST /api/tenants HTTP/1.1\r\nHost: orq.test\r\nContent-Type: application/json\r\n" \
                   + admin + b"Content-Length: 100\r\n\r\n{\""
    stalled_head = b"GET /healthz HTTP/1.1\r\nHost: orq.test\r\nX-Slow: "

    async def timed(head: bytes) -> tuple[bytes, float]:
        started = time.monotonic()
        answer = await _exchange(served, head, timeout=STALL_TIMEOUT_S + 15)
        return answer, time.monotonic() - started

    async def slow_but_moving() -> int:
        # A body that pauses well under the limit between its parts is read whole and served.
        reader, writer = await asyncio.open_connection(served.host, served.port)
        body = b'{"name": "slow", "plan": "pro"}'
        writer.write(b"POST /api/tenants HTTP/1.1\r\nHost: orq.test\r\n" + admin + b"Content-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body[:5])
        await writer.drain()
        await asyncio.sleep(2)
        writer.write(body[5:])
        await writer.drain()
        status = int((await asyncio.wait_for(reader.readline(), 10))[9:12])
        writer.close()
        return status

    (body_answer, body_s), (head_answer, head_s), (idle_answer, idle_s), moving = await asyncio.gather(
        timed(stalled_body), timed(stalled_head), timed(b""), slow_but_moving())
    assert _status(body_answer) == 408 and _error(body_answer)["code"] == "request_timeout"
    assert _status(head_answer) == 408
    assert idle_answer == b"" or _status(idle_answer) == 408
    for elapsed in (body_s, head_s, idle_s):
        assert STALL_TIMEOUT_S - 1 <= elapsed <= STALL_TIMEOUT_S + 2, elapsed
    assert moving == 201
