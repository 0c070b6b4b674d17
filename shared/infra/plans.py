"""Plans: what each tier of tenant may do. Defaults from the design brief; a JSON file may replace them."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """Limits of one plan. ``monthly_quota`` of 0 means unlimited."""

    name: str
    monthly_quota: int
    rate_per_minute: int
    max_concurrent: int
    default_priority: int
    min_priority: int
    weight: int = 1
    max_backlog: int = 0

    def limits(self) -> list[int]:
        """What dispatch.lua needs: concurrent, rate per minute, weight."""
        return [self.max_concurrent, self.rate_per_minute, self.weight]

    @property
    def unlimited(self) -> bool:
        return self.monthly_quota == 0


def default_plans() -> dict[str, Plan]:
    return {
        "trial": Plan(name="trial", monthly_quota=100, rate_per_minute=10, max_concurrent=2,
                      default_priority=8, min_priority=6, weight=1, max_backlog=1_000),
        "pro": Plan(name="pro", monthly_quota=10_000, rate_per_minute=100, max_concurrent=10,
                    default_priority=5, min_priority=3, weight=2, max_backlog=100_000),
        "enterprise": Plan(name="enterprise", monthly_quota=0, rate_per_minute=1_000, max_concurrent=50,
                           default_priority=2, min_priority=1, weight=4, max_backlog=1_000_000),
    }


def plan_named(plans: Mapping[str, Plan], name: str) -> Plan:
    """The tenant's plan; a plan removed from the configuration falls back to the smallest quota."""
    if name in plans:
        return plans[name]
    return min(plans.values(), key=lambda p: (p.monthly_quota == 0, p.monthly_quota))


def load_plans(path: str) -> dict[str, Plan]:
    """Read plans from a JSON file: ``{"trial": {...Plan fields but name...}, ...}``."""
    from shared.infra.errors import ConfigError

    try:
        with open(path, "rb") as f:
            raw = msgspec.json.decode(f.read(), type=dict[str, dict[str, int]])
        return {name: msgspec.convert({**fields, "name": name}, Plan) for name, fields in raw.items()}
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"cannot load plans from {path}: {exc}") from exc
