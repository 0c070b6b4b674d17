"""Settings, read once from ``ORQ_*`` environment variables and passed down explicitly."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from shared.errors import ConfigError
from shared.plans import Plan, default_plans, load_plans


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a service needs to know about its deployment."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "sqlite+aiosqlite:///orq.db"
    admin_token: str = ""
    partitions: int = 4
    executor_concurrency: int = 5
    lease_s: float = 30.0
    max_crashes: int = 3
    max_body_bytes: int = 4 * 1024 * 1024
    idempotency_ttl_s: int = 24 * 3600
    projector_batch: int = 500
    plans: Mapping[str, Plan] = field(default_factory=default_plans)

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from the environment (``os.environ`` unless given)."""
    env = os.environ if env is None else env
    defaults = Settings()
    plans_file = env.get("ORQ_PLANS_FILE")
    return Settings(
        redis_url=env.get("ORQ_REDIS_URL") or defaults.redis_url,
        database_url=env.get("ORQ_DATABASE_URL") or defaults.database_url,
        admin_token=env.get("ORQ_ADMIN_TOKEN") or secrets.token_urlsafe(24),
        partitions=_int(env, "ORQ_PARTITIONS", defaults.partitions),
        executor_concurrency=_int(env, "ORQ_EXECUTOR_CONCURRENCY", defaults.executor_concurrency),
        lease_s=_float(env, "ORQ_LEASE_SECONDS", defaults.lease_s),
        max_crashes=_int(env, "ORQ_MAX_CRASHES", defaults.max_crashes),
        max_body_bytes=_int(env, "ORQ_MAX_BODY_BYTES", defaults.max_body_bytes),
        projector_batch=_int(env, "ORQ_PROJECTOR_BATCH", defaults.projector_batch),
        plans=load_plans(plans_file) if plans_file else default_plans(),
    )
