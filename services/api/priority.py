"""Priority bounds: 1 (highest) to 10, and never above what the tenant's plan allows."""

from __future__ import annotations

from shared.infra.errors import ValidationFailed
from shared.infra.plans import Plan

LOWEST = 10


def check_priority(priority: int, plan: Plan, field: str) -> int:
    """``priority`` if the plan allows it, else a 422 naming ``field``."""
    if not plan.min_priority <= priority <= LOWEST:
        raise ValidationFailed(
            f"{field}: the {plan.name} plan allows priorities {plan.min_priority} to {LOWEST}",
            field=field,
            min=plan.min_priority,
            max=LOWEST,
        )
    return priority
