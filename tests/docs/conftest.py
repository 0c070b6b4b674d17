"""Doc tests post examples to the real API app: the API tests' fixtures, reused."""

from __future__ import annotations

from tests.api.conftest import api_redis, app, client, tenant

__all__ = ["api_redis", "app", "client", "tenant"]
