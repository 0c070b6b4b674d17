"""The notifier against a real HTTP server and a real SMTP server on 127.0.0.1: signatures, retries with
backoff, final failure, SSRF refusal, email, and exactly-once queueing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
from aiosmtpd.controller import Controller
from redis.asyncio import Redis

from services.notifier.delivery import Deliverer
from services.notifier.service import Notifier
from shared.domain import commit_script
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.consumer import records_of
from shared.log.events import EventBase, decode, type_of
from shared.log.redis import text
from shared.log.workflows import NotifyDef
from tests.helpers import REDIS_URL, assert_eventually
from tests.notifier.support import TENANT, end_execution, valid_signature, webhook_server

SECRET = "s3cret-key-for-hmac"


def _settings(**overrides: Any) -> Settings:
    base = Settings(redis_url=REDIS_URL, partitions=4, allow_private_webhooks=True, notify_backoff_ms=50,
                    maintenance_interval_s=0, webhook_timeout_s=5)
    return base.with_overrides(**overrides)


@asynccontextmanager
async def running(settings: Settings, redis: Redis) -> AsyncIterator[Notifier]:
    committer = commit_script.committer(redis)
    stop = asyncio.Event()
    async with httpx.AsyncClient() as client:
        notifier = Notifier(settings, redis, committer, Deliverer(settings, client), name="notifier-test")
        task = asyncio.create_task(notifier.run(stop))
        try:
            yield notifier
        finally:
            stop.set()
            await task
            await committer.close()


async def notification_events(redis: Redis, partitions: int = 4) -> list[EventBase]:
    out: list[EventBase] = []
    for p in range(partitions):
        for record in records_of(await redis.xrange(keys.log(p))):  # type: ignore[arg-type]
            if record.type.startswith("notification."):
                out.append(decode(record.body, record.id))
    return out


def types(events: list[EventBase]) -> list[str]:
    return [type_of(e) for e in events]


async def wait_for(redis: Redis, predicate: Callable[[list[EventBase]], bool], timeout: float = 10) -> list[EventBase]:
    async def check() -> list[EventBase]:
        events = await notification_events(redis)
        assert predicate(events), types(events)
        return events

    return await assert_eventually(check, timeout=timeout)


async def test_webhook_is_signed_and_retried_after_two_500s(redis: Redis) -> None:
    settings = _settings()
    with webhook_server(500, 500, 200) as server:
        notify = [NotifyDef(on=["completed"], webhook=server.url, secret=SECRET)]
        async with running(settings, redis) as notifier:
            await end_execution(redis, notifier.committer, settings.partitions, notify, execution_id="e" * 32)
            events = await wait_for(redis, lambda ev: "notification.sent" in types(ev))
    assert types(events) == ["notification.queued", "notification.failed", "notification.failed", "notification.sent"]
    assert len(server.requests) == 3
    assert all(valid_signature(SECRET, r) for r in server.requests)
    assert [r.headers["x-orquesta-attempt"] for r in server.requests] == ["1", "2", "3"]
    assert len({r.headers["x-orquesta-delivery"] for r in server.requests}) == 1
    body = msgspec.json.decode(server.requests[-1].body)
    assert body["event"] == "execution.completed" and body["execution_id"] == "e" * 32
    assert body["workflow_name"] == "nightly report" and body["result"] == {"n": 1}
    failed = [e for e in events if type_of(e) == "notification.failed"]
    assert [e.retry_in_ms for e in failed] == [50, 100]  # exponential: base × 2^(n−1)
    sent = events[-1]
    assert sent.attempt == 3 and sent.status_code == 200
    # Nothing left to deliver: the entry was acked and deleted.
    p = keys.partition_of(TENANT, settings.partitions)
    assert await redis.xlen(keys.notify(p)) == 0
    assert text(await redis.hget(keys.notification(p, sent.aggregate_id), "status")) == "sent"


async def test_a_tampered_body_fails_the_signature(redis: Redis) -> None:
    settings = _settings()
    with webhook_server(200) as server:
        notify = [NotifyDef(on=["completed"], webhook=server.url, secret=SECRET)]
        async with running(settings, redis) as notifier:
            await end_execution(redis, notifier.committer, settings.partitions, notify, execution_id="e" * 32)
            await wait_for(redis, lambda ev: "notification.sent" in types(ev))
    [request] = server.requests
    assert valid_signature(SECRET, request)
    request.body = request.body.replace(b"completed", b"cancelled")
    assert not valid_signature(SECRET, request)
    assert not valid_signature("another-secret", server.requests[0])


async def test_attempts_run_out_into_a_final_failure(redis: Redis) -> None:
    settings = _settings(notify_attempts=2)
    with webhook_server(503) as server:
        notify = [NotifyDef(on=["failed"], webhook=server.url)]
        async with running(settings, redis) as notifier:
            await end_execution(redis, notifier.committer, settings.partitions, notify, execution_id="f" * 32,
                                failed=True)
            events = await wait_for(redis, lambda ev: any(getattr(e, "final", False) for e in ev))
            p = keys.partition_of(TENANT, settings.partitions)
            assert await redis.xlen(keys.notify(p)) == 0  # nothing waits for another attempt
    assert types(events) == ["notification.queued", "notification.failed", "notification.failed"]
    assert len(server.requests) == 2
    assert "x-orquesta-signature" not in server.requests[0].headers  # no secret, no signature
    assert "HTTP 503" in events[-1].error


async def test_only_matching_triggers_notify(redis: Redis) -> None:
    settings = _settings()
    with webhook_server(200) as server:
        notify = [NotifyDef(on=["failed", "dead_lettered"], webhook=server.url)]
        async with running(settings, redis) as notifier:
            await end_execution(redis, notifier.committer, settings.partitions, notify, execution_id="a" * 32)
            await end_execution(redis, notifier.committer, settings.partitions, notify, execution_id="b" * 32,
                                failed=True)
            events = await wait_for(redis, lambda ev: "notification.sent" in types(ev))
    assert {e.execution_id for e in events} == {"b" * 32}
    assert len(server.requests) == 1


async def test_loopback_webhooks_are_refused_without_the_flag(redis: Redis) -> None:
    settings = _settings(allow_private_webhooks=False)
    with webhook_server(200) as server:
        notify = [NotifyDef(on=["completed"], webhook=server.url.replace("127.0.0.1", "localhost"))]
        async with running(settings, redis) as notifier:
            await end_execution(redis, notifier.committer, settings.partitions, notify, execution_id="c" * 32)
            events = await wait_for(redis, lambda ev: "notification.failed" in types(ev))
    assert server.requests == []  # never contacted
    failed = events[-1]
    assert failed.final is True  # an address check does not change by retrying
    assert "loopback" in failed.error


async def test_a_redelivered_log_entry_queues_nothing_new(redis: Redis) -> None:
    settings = _settings()
    committer = commit_script.committer(redis)
    async with httpx.AsyncClient() as client:
        notifier = Notifier(settings, redis, committer, Deliverer(settings, client), name="n1")
        notify = [NotifyDef(on=["completed"], webhook="https://hooks.example.com/x"),
                  NotifyDef(on=["completed"], email="ops@example.com")]
        await end_execution(redis, committer, settings.partitions, notify, execution_id="d" * 32)
        p = keys.partition_of(TENANT, settings.partitions)
        records = records_of(await redis.xrange(keys.log(p)))  # type: ignore[arg-type]
        await notifier.on_log(keys.log(p), records)
        await notifier.on_log(keys.log(p), records)  # redelivery after a crash before the ack
    await committer.close()
    events = await notification_events(redis)
    assert types(events) == ["notification.queued", "notification.queued"]
    assert {e.channel for e in events} == {"webhook", "email"}
    assert await redis.xlen(keys.notify(p)) == 2


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802 - aiosmtpd
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_inbox() -> Any:
    inbox = _Inbox()
    with socket.socket() as probe:  # aiosmtpd checks it is up by connecting: it needs a real port number
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


async def test_email_goes_through_smtp(redis: Redis, smtp_inbox: tuple[_Inbox, int]) -> None:
    inbox, port = smtp_inbox
    settings = _settings(smtp_url=f"smtp://127.0.0.1:{port}?from=orquesta@example.com")
    notify = [NotifyDef(on=["failed"], email="ops@example.com")]
    async with running(settings, redis) as notifier:
        await end_execution(redis, notifier.committer, settings.partitions, notify, execution_id="m" * 32,
                            failed=True)
        events = await wait_for(redis, lambda ev: "notification.sent" in types(ev))
    [(sender, recipients, content)] = inbox.messages
    assert sender == "orquesta@example.com" and recipients == ["ops@example.com"]
    assert b"Subject: [Orquesta] nightly report: execution failed" in content
    assert b"error: boom" in content
    assert events[-1].channel == "email"


async def test_email_without_smtp_configured_fails_at_once(redis: Redis) -> None:
    settings = _settings(smtp_url="")
    notify = [NotifyDef(on=["completed"], email="ops@example.com")]
    async with running(settings, redis) as notifier:
        await end_execution(redis, notifier.committer, settings.partitions, notify, execution_id="n" * 32)
        events = await wait_for(redis, lambda ev: "notification.failed" in types(ev))
    assert events[-1].final is True and "ORQ_SMTP_URL" in events[-1].error


async def test_a_due_retry_is_found_behind_a_long_pending_list(redis: Redis) -> None:
    """201 deliveries wait out a long backoff; the one whose delay is over is attempted again all the same,
    though it is not among the first 200 pending entries (issue 11, defect 5)."""
    settings = _settings(notify_attempts=3, notify_backoff_ms=3_600_000)
    count = 201
    with webhook_server(503) as server:
        notify = [NotifyDef(on=["failed"], webhook=server.url)]
        async with running(settings, redis) as notifier:
            for n in range(count):
                await end_execution(redis, notifier.committer, settings.partitions, notify,
                                    execution_id=f"{n:032x}", failed=True)

            async def all_failed_once() -> bool:
                return len(server.requests) == count

            await assert_eventually(all_failed_once, timeout=30, message="every first attempt made")
            p = keys.partition_of(TENANT, settings.partitions)
            last = (await redis.xrevrange(keys.notify(p), count=1))[0][1][b"n"].decode()
            await redis.hset(keys.notification(p, last), "retry_delay", 0)  # its backoff is over

            async def attempted_again() -> bool:
                return len(server.requests) == count + 1

            await assert_eventually(attempted_again, timeout=10, message="the due retry was attempted")
