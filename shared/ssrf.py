"""Outbound HTTP to addresses customers choose, without letting them reach inside the deployment (SSRF).

A customer's webhook URL could name ``127.0.0.1``, a cloud metadata address (``169.254.169.254``), a
private network, or a hostname that resolves to one of those. Before each request the host is resolved and
**every** address it resolves to is checked; the request then goes to the checked address itself (the
connection is pinned: the URL's host is replaced by the IP, ``Host`` and TLS SNI keep the name, and the
certificate is verified against the name), so a DNS answer that changes between check and connect
(DNS rebinding) cannot redirect it. Redirects are never followed. ``ORQ_ALLOW_PRIVATE_WEBHOOKS`` lifts
the address check (development, tests, on-premises receivers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from shared.errors import ValidationFailed

MAX_URL_LENGTH = 2000
SCHEMES = frozenset({"http", "https"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def check_url(raw: str, field: str = "webhook") -> httpx.URL:
    """Shape checks that need no DNS: http(s), a host, no credentials in the URL, a sane length."""
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
    if url.userinfo:
        raise ValidationFailed(f"{field}: credentials in the URL are not allowed; sign with `secret`", field=field)
    return url


def forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be reached from here (None when it is a public unicast address)."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
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


async def resolve(url: httpx.URL, *, allow_private: bool) -> Target:
    """Resolve ``url``'s host and check every address; :class:`BlockedAddress` if any one is forbidden."""
    host = url.host
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ValidationFailed(f"webhook: cannot resolve {host}: {exc}", field="webhook") from None
        addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(ipaddress.ip_address(address))
            if reason is not None:
                raise BlockedAddress(
                    f"webhook: {host} resolves to {address} ({reason}); outbound requests to loopback, "
                    "link-local and private addresses are refused (ORQ_ALLOW_PRIVATE_WEBHOOKS lifts this)",
                    field="webhook",
                    address=address,
                )
    if not addresses:
        raise ValidationFailed(f"webhook: {host} has no address", field="webhook")
    return Target(url, host, port, tuple(addresses))


async def pinned_post(
    client: httpx.AsyncClient, target: Target, *, content: bytes, headers: Mapping[str, str], timeout_s: float
) -> httpx.Response:
    """POST to ``target`` at its checked addresses (first that connects), never following redirects."""
    host_header = target.host if target.url.port is None else f"{target.host}:{target.port}"
    last: httpx.TransportError | None = None
    for address in target.addresses:
        url = target.url.copy_with(host=address)
        extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
        try:
            return await client.post(
                url,
                content=content,
                headers={**headers, "Host": host_header},
                timeout=timeout_s,
                follow_redirects=False,
                extensions=extensions,
            )
        except httpx.ConnectError as exc:  # try the host's next address
            last = exc
    assert last is not None
    raise last
