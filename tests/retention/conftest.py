"""Retention tests run the real app, projector and executor (as ``tests/api``) with a one-second retention."""

from __future__ import annotations

import pytest

from shared.infra.settings import Settings
from tests.api.conftest import api_redis, app, client, committer, tenant

__all__ = ["api_redis", "app", "client", "committer", "tenant"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings with ``ORQ_STATE_RETENTION_S=1``: an ended, projected execution's hash lasts 1 s."""
    return settings.with_overrides(state_retention_s=1)
