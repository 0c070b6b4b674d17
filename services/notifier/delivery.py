"""One delivery attempt: a signed webhook POST (SSRF-checked, pinned) or an email through SMTP.

Webhook requests carry (see docs/notifications.md)::

    Content-Type: application/json
    X-Orquesta-Event: execution.completed | execution.failed | execution.dead_lettered
    X-Orquesta-Delivery: <notification id>        (the same on every attempt: receivers dedupe on it)
    X-Orquesta-Attempt: <n>
    X-Orquesta-Timestamp: <unix seconds>
    X-Orquesta-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>   (when a secret is set)

A 2xx answer is a success; anything else (3xx included: redirects are not followed), a timeout or a
connection error is a failed attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import msgspec

from shared.infra.errors import ConfigError, OrqError
from shared.infra.settings import Settings
from shared.infra.ssrf import check_url, pinned_post, resolve

SIGNATURE_HEADER = "X-Orquesta-Signature"
TIMESTAMP_HEADER = "X-Orquesta-Timestamp"
MAX_ERROR = 1000

_decoder = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt gave: ``ok``, the HTTP status (webhooks), an error text, how long it took."""

    ok: bool
    status_code: int | None = None
    error: str = ""
    duration_ms: int = 0
    retryable: bool = True


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 with ``secret`` over ``"<timestamp>." + body``."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def webhook_headers(*, event: str, delivery: str, attempt: int, body: bytes, secret: str | None,
                    now_s: int) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Orquesta-Webhook/1",
        "X-Orquesta-Event": event,
        "X-Orquesta-Delivery": delivery,
        "X-Orquesta-Attempt": str(attempt),
        TIMESTAMP_HEADER: str(now_s),
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, now_s, body)
    return headers


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """``ORQ_SMTP_URL``: ``smtp://[user:password@]host[:port][?from=addr&starttls=1]`` or ``smtps://…``."""

    host: str
    port: int
    tls: bool
    starttls: bool
    username: str | None
    password: str | None
    sender: str

    @classmethod
    def parse(cls, url: str) -> SmtpConfig:
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
            raise ConfigError(f"ORQ_SMTP_URL must look like smtp://host:port or smtps://host:port, got {url!r}")
        query = parse_qs(parts.query)
        tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if tls else 25),
            tls=tls,
            starttls=query.get("starttls", ["0"])[0] in {"1", "true", "yes"},
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            sender=query.get("from", [f"orquesta@{socket.gethostname()}"])[0],
        )


def email_message(sender: str, to: str, body: bytes) -> EmailMessage:
    data = _decoder.decode(body)
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = f"[Orquesta] {data.get('workflow_name', 'workflow')}: execution {data.get('status')}"
    lines = [f"{key}: {value}" for key, value in data.items() if key not in {"result"}]
    message["X-Orquesta-Delivery"] = str(data.get("id", ""))
    message.set_content("\n".join(lines) + "\n")
    return message


class Deliverer:
    """Sends notifications with one shared HTTP client; SMTP connections are opened per mail."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client
        self.smtp = SmtpConfig.parse(settings.smtp_url) if settings.smtp_url else None

    async def webhook(self, url: str, *, body: bytes, event: str, delivery: str, attempt: int,
                      secret: str | None, now_s: int) -> Attempt:
        started = time.monotonic()
        try:
            target = await resolve(check_url(url), allow_private=self.settings.allow_private_webhooks)
            headers = webhook_headers(event=event, delivery=delivery, attempt=attempt, body=body, secret=secret,
                                      now_s=now_s)
            reply = await pinned_post(self.client, target, content=body, headers=headers,
                                      timeout_s=self.settings.webhook_timeout_s)
        except OrqError as exc:  # blocked or malformed target: trying again changes nothing
            return Attempt(False, None, exc.message[:MAX_ERROR], _since(started), retryable=False)
        except httpx.HTTPError as exc:
            return Attempt(False, None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR], _since(started))
        if 200 <= reply.status_code < 300:
            return Attempt(True, reply.status_code, "", _since(started))
        return Attempt(False, reply.status_code, f"HTTP {reply.status_code}: {reply.text[:200]}"[:MAX_ERROR],
                       _since(started))

    async def email(self, to: str, *, body: bytes) -> Attempt:
        started = time.monotonic()
        if self.smtp is None:
            return Attempt(False, None, "no SMTP server configured (ORQ_SMTP_URL)", 0, retryable=False)
        try:
            await asyncio.to_thread(self._send_mail, self.smtp, email_message(self.smtp.sender, to, body))
        except (OSError, smtplib.SMTPException) as exc:
            return Attempt(False, None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR], _since(started))
        return Attempt(True, None, "", _since(started))

    def _send_mail(self, config: SmtpConfig, message: EmailMessage) -> None:
        timeout = self.settings.webhook_timeout_s
        smtp: smtplib.SMTP
        if config.tls:
            smtp = smtplib.SMTP_SSL(config.host, config.port, timeout=timeout, context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(config.host, config.port, timeout=timeout)
        with smtp:
            if config.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if config.username:
                smtp.login(config.username, config.password or "")
            smtp.send_message(message)


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
