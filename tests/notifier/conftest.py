"""The API fixtures of tests/api, for the notification routes."""

from __future__ import annotations

from tests.api.conftest import api_redis, app, client, tenant

__all__ = ["api_redis", "app", "client", "tenant"]
