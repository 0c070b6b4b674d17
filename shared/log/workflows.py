"""Workflow definitions: what a tenant saves and what a queued execution pins."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class Backoff(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long to wait before attempt ``n+1``: ``delay_ms`` (fixed) or ``delay_ms × 2^(n−1)`` (exponential)."""

    type: Literal["exponential", "fixed"] = "exponential"
    delay_ms: int = 5000

    def delay_before(self, next_attempt: int) -> int:
        """Milliseconds to wait after attempt ``next_attempt − 1`` failed."""
        failed = max(1, next_attempt - 1)
        if self.type == "fixed":
            return self.delay_ms
        return int(self.delay_ms * 2 ** (failed - 1))


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    attempts: int = 3
    backoff: Backoff = Backoff()


class StepDef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    action: str
    label: str | None = None
    params: dict[str, Any] = {}
    timeout_s: float | None = None
    on_error: Literal["fail", "continue"] = "fail"
    # A robot pool: the step is offered to the tenant's robots of that pool instead of running in an executor.
    runs_on: str | None = None


class NotifyDef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Tell someone when an execution ends: a webhook POST (signed when ``secret`` is set) or an email."""

    on: list[Literal["completed", "failed", "dead_lettered"]]
    webhook: str | None = None
    secret: str | None = None
    email: str | None = None


class WorkflowDef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A workflow as saved: ordered steps plus its retry policy and who to notify when a run ends."""

    name: str
    steps: list[StepDef]
    retry: RetryPolicy = RetryPolicy()
    retry_from: Literal["failed_step", "start"] = "failed_step"
    description: str | None = None
    notify: list[NotifyDef] = []


MAX_STEPS = 200
MAX_ATTEMPTS = 100
MAX_DELAY_MS = 24 * 3600 * 1000
MAX_NOTIFY = 20
