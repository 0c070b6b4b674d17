"""The SMTP listener with a real SMTP client (smtplib): mail fires its trigger; unknown mailboxes are refused at
RCPT; the size limit holds; a mail delivered twice fires once."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from dataclasses import replace
from email.message import EmailMessage

import httpx
import pytest
from redis.asyncio import Redis

from services.trigger.email import serve_smtp
from shared.domain.triggers.firing import Firer
from shared.infra.settings import Settings
from shared.log.events import ExecutionQueued, TriggerFired
from tests.api.support import TenantHandle
from tests.helpers import assert_eventually, free_port
from tests.trigger.conftest import events_of, make_trigger

DOMAIN = "robots.example"


@pytest.fixture
async def smtp(redis: Redis, firer: Firer, settings: Settings) -> AsyncIterator[Settings]:
    """The listener on a free port; yields the settings it runs with."""
    mail_settings = replace(settings, smtp_port=free_port(), email_domain=DOMAIN, smtp_max_bytes=64 * 1024)
    stop = asyncio.Event()
    task = asyncio.create_task(serve_smtp(redis, firer, mail_settings, stop))

    async def listening() -> None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", mail_settings.smtp_port)
        except OSError as exc:
            raise AssertionError(str(exc)) from exc
        writer.close()

    await assert_eventually(listening, timeout=5)
    yield mail_settings
    stop.set()
    await asyncio.wait_for(task, 10)


def _message(to: str, subject: str = "Invoice 42", message_id: str = "<inv-42@erp.example>") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Ana <ana@erp.example>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content("Please process the attached invoice.\n")
    message.add_attachment(b"%PDF-1.4 fake" * 10, maintype="application", subtype="pdf", filename="invoice-42.pdf")
    message.add_attachment("a,b\n1,2\n", filename="lines.csv")
    return message


def _send(port: int, message: EmailMessage, to: list[str]) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.send_message(message, to_addrs=to)


async def test_mail_fires_the_trigger_with_its_contents(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, smtp: Settings
) -> None:
    trigger = await make_trigger(client, tenant, "email", params={"inbox": "ap"})
    address = f"{trigger['config']['token']}@{DOMAIN}"
    assert trigger["email_address"] == f"{trigger['config']['token']}@orquesta.localhost"  # the API's default
    refused = await asyncio.to_thread(_send, smtp.smtp_port, _message(address), [address])
    assert refused == {}

    async def queued() -> ExecutionQueued:
        events = await events_of(redis, tenant.partition, "execution.queued")
        assert len(events) == 1 and isinstance(events[0], ExecutionQueued)
        return events[0]

    run = await assert_eventually(queued)
    assert run.trigger_type == "email"
    params = run.params
    assert params["from"] == "Ana <ana@erp.example>" and params["subject"] == "Invoice 42"
    assert params["text"].strip() == "Please process the attached invoice." and params["inbox"] == "ap"
    assert params["attachments"] == [
        {"name": "invoice-42.pdf", "size": 130, "content_type": "application/pdf"},
        {"name": "lines.csv", "size": 10, "content_type": "text/plain"},  # text travels with CRLF line ends
    ]
    # The sender retries the same mail (it lost our reply): accepted, fired once.
    await asyncio.to_thread(_send, smtp.smtp_port, _message(address), [address])
    fired = await events_of(redis, tenant.partition, "trigger.fired")
    assert len(fired) == 1 and isinstance(fired[0], TriggerFired) and fired[0].source["subject"] == "Invoice 42"
    await asyncio.to_thread(_send, smtp.smtp_port, _message(address, message_id="<inv-43@erp.example>"), [address])
    assert len(await events_of(redis, tenant.partition, "trigger.fired")) == 2


async def test_unknown_disabled_and_foreign_addresses_are_refused_at_rcpt(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, smtp: Settings
) -> None:
    trigger = await make_trigger(client, tenant, "email")
    token = trigger["config"]["token"]
    r = await client.put(f"/api/triggers/{trigger['id']}", headers=tenant.headers, json={
        "workflow_id": trigger["workflow_id"], "trigger_type": "email", "enabled": False})
    assert r.status_code == 200
    for address in (f"{'0' * 40}@{DOMAIN}", f"{token}@{DOMAIN}", f"{token}@elsewhere.example", "postmaster"):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
            await asyncio.to_thread(_send, smtp.smtp_port, _message(address), [address])
        assert caught.value.recipients[address][0] == 550
    assert await events_of(redis, tenant.partition, "trigger.fired") == []


async def test_size_limit(client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, smtp: Settings) -> None:
    trigger = await make_trigger(client, tenant, "email")
    address = f"{trigger['config']['token']}@{DOMAIN}"
    message = _message(address)
    message.add_attachment(b"x" * (smtp.smtp_max_bytes + 1), maintype="application", subtype="octet-stream",
                           filename="huge.bin")
    with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPSenderRefused, smtplib.SMTPServerDisconnected)) as caught:
        await asyncio.to_thread(_send, smtp.smtp_port, message, [address])
    if isinstance(caught.value, smtplib.SMTPDataError | smtplib.SMTPSenderRefused):
        assert caught.value.smtp_code == 552
    assert await events_of(redis, tenant.partition, "trigger.fired") == []
