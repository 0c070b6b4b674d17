"""Builders of the execution scheduling ops (``lua/commit_ops_executions.lua`` beside this module) on a Unit.

Backlogs, parked executions, concurrency slots, work entries and robot tasks: each function appends one op to
``unit`` and returns it. The Committer running the unit must carry that library (``shared/domain/commit_script.py``).
"""

from __future__ import annotations

from shared.log import keys
from shared.log.commit import Unit


def to_backlog(unit: Unit, p: int, priority: int, tenant_id: str, execution_id: str) -> Unit:
    """Queue an execution at ``priority`` behind the tenant's other queued ones (dispatch is fair-share)."""
    return unit.op("backlog", keys.prefix(p), tenant_id, execution_id, priority)


def unqueue(unit: Unit, p: int, execution_id: str) -> Unit:
    """Take a queued, not yet dispatched execution out of its backlog (or its workflow's parked list)."""
    return unit.op("unqueue", keys.prefix(p), execution_id)


def reprioritize(unit: Unit, p: int, tenant_id: str, execution_id: str, previous: int, priority: int) -> Unit:
    """Move a queued execution's backlog entry from level ``previous`` to the back of ``priority``."""
    return unit.op("reprioritize", keys.prefix(p), tenant_id, execution_id, previous, priority)


def unpark(unit: Unit, p: int, workflow_id: str) -> Unit:
    """Put a workflow's set-aside executions back in front of their backlogs (resumed or deleted)."""
    return unit.op("unpark", keys.parked(p, workflow_id), keys.prefix(p))


def wake(unit: Unit, p: int, tenant_id: str) -> Unit:
    """The tenant's limits changed (resumed, new plan): dispatch looks at it again now."""
    return unit.op("wake", keys.prefix(p), tenant_id)


def release(unit: Unit, p: int, tenant_id: str, execution_id: str) -> Unit:
    """End the execution's hand-out: free the tenant's concurrency slot if it held one (at most once)."""
    return unit.op("release", keys.prefix(p), execution_id, tenant_id)


def unwork(unit: Unit, p: int, execution_id: str, group: str = keys.GROUP_EXECUTOR) -> Unit:
    """Take back (ack and delete) the execution's work entry, if it has one, and drop a pending retry."""
    return unit.op("unwork", keys.prefix(p), execution_id, group)


def untask(unit: Unit, p: int, execution_id: str) -> Unit:
    """End the execution's robot task, if it has one (offered or claimed), and unpark it."""
    return unit.op("untask", keys.prefix(p), execution_id)
