"""The end-to-end fixtures (real ``orq`` processes) of ``tests/e2e``, for the work-queue e2e tests."""

from __future__ import annotations

from tests.e2e.conftest import admin, deployment, tenant

__all__ = ["admin", "deployment", "tenant"]
