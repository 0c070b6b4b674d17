"""Outbound HTTP to addresses customers choose, without letting them reach inside the deployment (SSRF).

Used by webhook notifications and ``http_request`` steps. A URL could name ``127.0.0.1`` (also written
``2130706433``, ``0x7f000001`` or ``0177.0.0.1``), a cloud metadata address (``169.254.169.254``), a private
network, or a hostname that resolves to one of those. Before each request the host is resolved and **every**
address it resolves to is checked; the request then goes to the checked address itself (the connection is
pinned: the URL's host is replaced by the IP, ``Host`` and TLS SNI keep the name, and the certificate is
verified against the name), so a DNS answer that changes between check and connect (DNS rebinding) cannot
redirect it. Redirects are never followed: a 3xx is the answer. ``ORQ_ALLOW_PRIVATE_NETWORKS=1`` (or its
older name ``ORQ_ALLOW_PRIVATE_WEBHOOKS``) lifts the address check (development, tests, on-premises
receivers); only http and https are ever allowed.

:func:`check_literal` is the part that needs no DNS, for refusing a literal URL when a workflow is saved.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from shared.infra.errors import ValidationFailed

MAX_URL_LENGTH = 2000
SCHEMES = frozenset({"http", "https"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LIFT = "ORQ_ALLOW_PRIVATE_NETWORKS=1 lifts this"
# IPv4 as inet_aton(3) reads it, which getaddrinfo accepts too: 1 to 4 dot-separated parts, each decimal,
# octal (leading 0) or hex (0x); the last part fills the remaining bytes ("127.1", "2130706433").
_INET_ATON = re.compile(r"(?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}", re.IGNORECASE)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(ValidationFailed):
    """The URL's host is (or resolves to) an address outbound requests may not reach."""

    code = "blocked_address"


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: its parts, and the addresses it may be sent to."""

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[str, ...]


def check_url(raw: str, field: str = "webhook", *, allow_credentials: bool = False) -> httpx.URL:
    """Shape checks that need no DNS: http(s), a host, no credentials in the URL (unless allowed), a sane length."""
    if len(raw) > MAX_URL_LENGTH:
        raise ValidationFailed(f"{field}: URL longer than {MAX_URL_LENGTH} characters", field=field)
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ValidationFailed(f"{field}: not a URL", field=field) from None
    if url.scheme not in SCHEMES:
        raise ValidationFailed(f"{field}: only http and https URLs are allowed", field=field)
    if not url.host:
        raise ValidationFailed(f"{field}: the URL has no host", field=field)
    if url.userinfo and not allow_credentials:
        raise ValidationFailed(f"{field}: credentials in the URL are not allowed; sign with `secret`", field=field)
    return url


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` stands for without any DNS lookup: an IP literal in any form resolvers accept."""
    host = host.rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not _INET_ATON.fullmatch(host):
        return None
    try:
        parts = [int(part, 16) if part[:2].lower() == "0x" else int(part, 8 if part[:1] == "0" else 10)
                 for part in host.split(".")]
    except ValueError:  # e.g. "08": not an address to inet_aton either, so a name
        return None
    *leading, last = parts
    if any(part > 255 for part in leading) or last >= 256 ** (4 - len(leading)):
        return None
    value = last
    for shift, part in enumerate(reversed(leading), start=4 - len(leading)):
        value |= part << (8 * shift)
    return ipaddress.IPv4Address(value)


def check_literal(url: httpx.URL, field: str, *, allow_private: bool) -> None:
    """Refuse, without DNS, a host that is a forbidden address however written, or a ``localhost`` name."""
    if allow_private:
        return
    host = url.host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):  # always loopback (RFC 6761)
        raise BlockedAddress(f"{field}: {url.host} is loopback; requests to loopback, private and link-local "
                             f"addresses are refused ({LIFT})", field=field, address=url.host)
    address = literal_address(host)
    reason = None if address is None else forbidden_reason(address)
    if address is not None and reason is not None:
        raise BlockedAddress(f"{field}: {url.host} is {address} ({reason}); requests to loopback, private and "
                             f"link-local addresses are refused ({LIFT})", field=field, address=str(address))


def forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be reached from here (None when it is a public unicast address)."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is None and address in _NAT64:  # a NAT64 gateway would carry it to the embedded IPv4 address
            mapped = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if mapped is not None:
            return forbidden_reason(mapped)
    for reason, hit in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if hit:
            return reason
    if not address.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT), documentation ranges
        return "not globally routable"
    return None


async def resolve(url: httpx.URL, *, allow_private: bool, field: str = "webhook") -> Target:
    """Resolve ``url``'s host and check every address; :class:`BlockedAddress` if any one is forbidden."""
    host = url.host
    port = url.port or (443 if url.scheme == "https" else 80)
    literal = literal_address(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ValidationFailed(f"{field}: cannot resolve {host}: {exc}", field=field) from None
        addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(ipaddress.ip_address(address))
            if reason is not None:
                raise BlockedAddress(
                    f"{field}: {host} resolves to {address} ({reason}); requests to loopback, private and "
                    f"link-local addresses are refused ({LIFT})",
                    field=field,
                    address=address,
                )
    if not addresses:
        raise ValidationFailed(f"{field}: {host} has no address", field=field)
    return Target(url, host, port, tuple(addresses))


async def pinned_post(
    client: httpx.AsyncClient, target: Target, *, content: bytes, headers: Mapping[str, str], timeout_s: float
) -> httpx.Response:
    """POST to ``target`` at its checked addresses (first that connects), never following redirects."""
    return await pinned_request(client, target, "POST", content=content, headers=headers, timeout_s=timeout_s)


async def pinned_request(
    client: httpx.AsyncClient,
    target: Target,
    method: str,
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    content: bytes | None = None,
    json: Any = None,
) -> httpx.Response:
    """Send to ``target`` at its checked addresses (first that connects), never following redirects."""
    sent_headers = httpx.Headers(headers)
    sent_headers["Host"] = target.host if target.url.port is None else f"{target.host}:{target.port}"
    last: httpx.TransportError | None = None
    for address in target.addresses:
        url = target.url.copy_with(host=address)
        extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
        try:
            return await client.request(
                method,
                url,
                content=content,
                json=json,
                headers=sent_headers,
                timeout=timeout_s,
                follow_redirects=False,
                extensions=extensions,
            )
        except httpx.ConnectError as exc:  # try the host's next address
            last = exc
    assert last is not None
    raise last
