"""SSRF guard: every resolved address is checked, and the request is pinned to a checked address."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from shared.infra.errors import ValidationFailed
from shared.infra.ssrf import BlockedAddress, check_url, forbidden_reason, pinned_post, resolve
from tests.notifier.support import webhook_server


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("100.64.0.1", "not globally routable"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("2002:a9fe:a9fe::1", "link-local"),
])
def test_forbidden_addresses(address: str, reason: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x", "http://localhost:8080/x", "http://[::1]/x", "http://10.0.0.5/x",
    "http://169.254.169.254/latest/meta-data/", "http://0177.0.0.1/x", "http://2130706433/x",
])
async def test_internal_targets_are_refused_without_the_flag(url: str) -> None:
    try:
        parsed = check_url(url)
    except ValidationFailed:
        return  # refused as malformed: also never contacted
    with pytest.raises((BlockedAddress, ValidationFailed)):
        await resolve(parsed, allow_private=False)


async def test_the_flag_allows_private_targets() -> None:
    target = await resolve(check_url("http://localhost:8080/x"), allow_private=True)
    assert set(target.addresses) <= {"127.0.0.1", "::1"} and target.host == "localhost"


@pytest.mark.parametrize(("url", "problem"), [
    ("ftp://example.com/x", "only http and https"), ("file:///etc/passwd", "only http and https"),
    ("https://user:pw@example.com/x", "credentials"), ("http:///x", "no host"), ("https://" + "a" * 2001, "longer"),
])
def test_malformed_urls(url: str, problem: str) -> None:
    with pytest.raises(ValidationFailed, match=problem):
        check_url(url)


async def test_requests_are_pinned_to_the_checked_address_and_keep_the_host_name() -> None:
    with webhook_server(302) as server:
        target = await resolve(check_url(server.url.replace("127.0.0.1", "localhost")), allow_private=True)
        async with httpx.AsyncClient() as client:
            reply = await pinned_post(client, target, content=b"{}", headers={}, timeout_s=5)
    assert reply.status_code == 302  # a redirect is an answer, never followed
    [request] = server.requests
    assert request.headers["host"] == f"localhost:{server.port}"
