"""The real-process deployment of tests/e2e, for the operator commands."""

from __future__ import annotations

from tests.e2e.conftest import admin, deployment, tenant

__all__ = ["admin", "deployment", "tenant"]
