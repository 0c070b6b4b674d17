"""``email`` triggers: an inbound SMTP listener (aiosmtpd) on ``ORQ_SMTP_HOST:ORQ_SMTP_PORT``.

Mail to ``<token>@<ORQ_EMAIL_DOMAIN>`` fires that trigger with ``from``, ``to``, ``subject``, ``text`` (the
plain-text body, else the HTML one; at most :data:`MAX_TEXT` characters), ``message_id`` and
``attachments`` (``[{name, size, content_type}]``; the contents are not kept) as params. Recipients are
checked at ``RCPT``: another domain, an unknown or disabled token → ``550``, so nothing is accepted for
nobody. Bodies over ``ORQ_SMTP_MAX_BYTES`` get ``552``. A mail with a ``Message-ID`` fires each trigger once
even if the sender delivers it again (a retry after a lost reply): the id is claimed in the firing unit.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import logging
from contextlib import suppress
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from redis.asyncio import Redis

from shared.domain.triggers.definitions import TriggerState, find_by_token
from shared.domain.triggers.firing import Claim, Fired, Firer, NotFired, Once, Request, Skipped
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.service import metrics

log = logging.getLogger(__name__)

MAX_TEXT = 100_000
MAX_ATTACHMENTS = 100
MAIL_CLAIM_TTL_S = 7 * 24 * 3600
BIND_RETRY_S = 30


def mail_params(raw: bytes, envelope_from: str, to: str) -> dict[str, Any]:
    """The params a mail gives its run."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(preferencelist=("plain", "html"))
    text = ""
    if body is not None:
        try:
            text = str(body.get_content())
        except (LookupError, ValueError):  # an unknown charset: keep what decodes
            payload = body.get_payload(decode=True)
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    attachments = []
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        attachments.append({
            "name": part.get_filename() or "",
            "size": len(payload) if isinstance(payload, bytes) else 0,
            "content_type": part.get_content_type(),
        })
    return {
        "from": str(message.get("From") or envelope_from),
        "to": to,
        "subject": str(message.get("Subject") or ""),
        "text": text[:MAX_TEXT],
        "text_truncated": len(text) > MAX_TEXT,
        "message_id": str(message.get("Message-ID") or ""),
        "attachments": attachments[:MAX_ATTACHMENTS],
    }


class MailHandler:
    """aiosmtpd handler: recipients checked at RCPT, triggers fired at DATA."""

    def __init__(self, redis: Redis, firer: Firer, settings: Settings) -> None:
        self.redis = redis
        self.firer = firer
        self.settings = settings

    async def _trigger_of(self, address: str) -> TriggerState | None:
        local, _, domain = address.strip("<>").rpartition("@")
        if domain.lower() != self.settings.email_domain:
            return None
        trigger = await find_by_token(self.redis, self.settings.partitions, local.lower())
        if trigger is None or not trigger.live or trigger.type != "email":
            return None
        return trigger

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if await self._trigger_of(address) is None:
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or (envelope.content if isinstance(envelope.content, bytes) else b"")
        results = []
        for address in envelope.rcpt_tos:
            trigger = await self._trigger_of(address)
            if trigger is None:  # disabled since RCPT
                continue
            params = mail_params(raw, envelope.mail_from or "", address)
            claims: list[Claim] = []
            if params["message_id"]:
                digest = hashlib.sha256(params["message_id"].encode()).hexdigest()
                claims.append(Once(keys.trigger_claim(trigger.partition, trigger.id, f"mail:{digest}"),
                                   MAIL_CLAIM_TTL_S))
            source = {"from": params["from"][:200], "subject": params["subject"][:200],
                      "message_id": params["message_id"][:200]}
            request = Request(params=params, source=source, claims=claims, consume_on_skip=False)
            results.append(outcome := await self.firer.fire(trigger.partition, trigger.id, request, now_ms()))
            if isinstance(outcome, Fired):
                metrics.trigger_fired(outcome.trigger.type)
        if any(isinstance(r, Fired) or (isinstance(r, NotFired) and r.reason == "claimed") for r in results):
            return "250 OK"
        if any(isinstance(r, Skipped) and r.reason == "quota" for r in results):
            return "550 5.7.1 Monthly execution quota exceeded"
        if any(isinstance(r, Skipped) for r in results):
            return "451 4.3.0 Cannot start the workflow now, try again later"
        return "550 5.1.1 No such mailbox here"


async def serve_smtp(redis: Redis, firer: Firer, settings: Settings, stop: asyncio.Event) -> None:
    """Listen until ``stop`` (``ORQ_SMTP_PORT=0``: never). A port already taken (another instance on this host)
    is not fatal: this instance tries again every :data:`BIND_RETRY_S` and takes over when it frees up."""
    if settings.smtp_port == 0:
        await stop.wait()
        return
    # aiosmtpd logs every command and every closed connection (a normal QUIT included) at INFO on "mail.log":
    # session chatter, not events; its warnings and errors still show.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    handler = MailHandler(redis, firer, settings)
    loop = asyncio.get_running_loop()
    failures = 0
    while not stop.is_set():
        try:
            server = await loop.create_server(
                lambda: SMTP(handler, data_size_limit=settings.smtp_max_bytes, hostname=settings.email_domain,
                             ident="Orquesta", enable_SMTPUTF8=True),
                host=settings.smtp_host,
                port=settings.smtp_port,
            )
        except OSError as exc:
            level = logging.WARNING if failures == 0 else logging.DEBUG
            log.log(level, "SMTP listener not started on %s:%d (%s); retrying every %d s", settings.smtp_host,
                    settings.smtp_port, exc, BIND_RETRY_S)
            failures += 1
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), BIND_RETRY_S)
            continue
        log.info("SMTP listener on %s:%d for *@%s", settings.smtp_host, settings.smtp_port, settings.email_domain)
        try:
            await stop.wait()
        finally:
            server.close()
            await server.wait_closed()
