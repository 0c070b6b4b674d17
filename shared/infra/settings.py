"""Settings, read once from ``ORQ_*`` environment variables and passed down explicitly."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from shared.infra.errors import ConfigError
from shared.infra.plans import Plan, default_plans, load_plans

# Events per projector transaction when a backlog builds up: 2,000 projects one partition ~20% faster than
# 500 (fewer commits and round trips); statements are still split by size, so large events are safe.
PROJECTOR_BATCH = 2000
# An ended execution's Redis state outlives the projection of its ending by this long (ORQ_STATE_RETENTION_S).
STATE_RETENTION_S = 3600
# ``orq dev``'s data folder (relative to where it runs) and the file in it that tells every other ``orq`` command
# run from the same folder how to reach that instance (see docs/operations.md "orq dev").
DEV_DATA_DIR = ".orq"
DEV_SETTINGS_FILE = "dev.json"
# The dev file's keys and the variables they stand in for when those are not set.
_DEV_VARIABLES = {"redis_url": "ORQ_REDIS_URL", "database_url": "ORQ_DATABASE_URL", "admin_token": "ORQ_ADMIN_TOKEN",
                  "partitions": "ORQ_PARTITIONS"}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a service needs to know about its deployment."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis Cluster (DESIGN §13, docs/scaling.md): ``redis_url`` is then one seed node of the cluster.
    redis_cluster: bool = False
    # Writes are answered (202, acks) only once this many replicas have them (``WAIT``); 0: not waited for.
    redis_wait_replicas: int = 0
    database_url: str = f"sqlite+aiosqlite:///{DEV_DATA_DIR}/orq.db"
    admin_token: str = ""
    partitions: int = 4
    executor_concurrency: int = 5
    lease_s: float = 30.0
    max_crashes: int = 3
    max_body_bytes: int = 4 * 1024 * 1024
    max_output_bytes: int = 256 * 1024
    idempotency_ttl_s: int = 24 * 3600
    projector_batch: int = PROJECTOR_BATCH
    rate_window_s: float = 60.0
    shutdown_grace_s: float = 30.0
    global_rate: int = 0
    plans: Mapping[str, Plan] = field(default_factory=default_plans)
    # Operations (services/notifier, services/admin, shared/log/durability.py; see docs/operations.md).
    allow_eviction: bool = False
    accept_rewound_redis: bool = False
    metrics_port: int = 0
    # ORQ_METRICS_TENANT_LABEL: what happens is also counted by tenant (a bounded label, shared/service/metrics.py).
    metrics_tenant_label: bool = False
    otel_endpoint: str = ""
    # ORQ_ALLOW_PRIVATE_NETWORKS (or its older name ORQ_ALLOW_PRIVATE_WEBHOOKS) sets both: http_request steps
    # and webhook notifications may then reach loopback, private and link-local addresses (shared/infra/ssrf.py).
    allow_private_webhooks: bool = False
    allow_private_networks: bool = False
    smtp_url: str = ""
    notify_attempts: int = 5
    notify_backoff_ms: int = 1000
    webhook_timeout_s: float = 10.0
    maintenance_interval_s: int = 3600
    log_min_retention_s: int = 3600
    dlq_max_entries: int = 10_000
    dlq_max_age_s: int = 30 * 24 * 3600
    # The Redis hash of an ended execution lives this long after its ending was projected into SQL
    # (services/projector/projector.py sets the TTL; a retry clears it or rebuilds the hash from SQL).
    state_retention_s: int = STATE_RETENTION_S
    # Robots (DESIGN §10, docs/robots.md): a claimed task whose robot sent no heartbeat for this long is offered
    # again (counted like an executor crash).
    robot_lease_s: float = 60.0
    # A robot not seen (no authenticated call) for this long is listed ``offline`` (GET /api/robots).
    robot_offline_s: float = 60.0
    # Triggers (services/trigger, see docs/triggers.md).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    email_domain: str = "orquesta.localhost"
    smtp_max_bytes: int = 10 * 1024 * 1024
    public_url: str = ""
    hook_rate_per_minute: int = 60
    hook_refused_per_minute: int = 10
    watch_root: str = ""
    trigger_poll_s: float = 0.5
    # API limits (services/api, see docs/operations.md "Limits").
    sql_timeout_s: float = 5.0
    # Work queues (shared/queues*.py, see docs/queues.md).
    queue_sweep_s: float = 30.0

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


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in {"", "0", "false", "no", "off"}:
        return False
    if raw in {"1", "true", "yes", "on"}:
        return True
    raise ConfigError(f"{name} must be 1/true/yes or 0/false/no, got {raw!r}")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from the environment (``os.environ`` unless given)."""
    env = os.environ if env is None else env
    defaults = Settings()
    plans_file = env.get("ORQ_PLANS_FILE")
    private_networks = _flag(env, "ORQ_ALLOW_PRIVATE_NETWORKS") or _flag(env, "ORQ_ALLOW_PRIVATE_WEBHOOKS")
    return Settings(
        redis_url=env.get("ORQ_REDIS_URL") or defaults.redis_url,
        redis_cluster=_flag(env, "ORQ_REDIS_CLUSTER"),
        redis_wait_replicas=_int(env, "ORQ_REDIS_WAIT_REPLICAS", defaults.redis_wait_replicas, minimum=0),
        database_url=env.get("ORQ_DATABASE_URL") or defaults.database_url,
        admin_token=env.get("ORQ_ADMIN_TOKEN") or secrets.token_urlsafe(24),
        partitions=_int(env, "ORQ_PARTITIONS", defaults.partitions),
        executor_concurrency=_int(env, "ORQ_EXECUTOR_CONCURRENCY", defaults.executor_concurrency),
        lease_s=_float(env, "ORQ_LEASE_SECONDS", defaults.lease_s),
        max_crashes=_int(env, "ORQ_MAX_CRASHES", defaults.max_crashes),
        robot_lease_s=_float(env, "ORQ_ROBOT_LEASE_S", defaults.robot_lease_s),
        robot_offline_s=_float(env, "ORQ_ROBOT_OFFLINE_S", defaults.robot_offline_s),
        max_body_bytes=_int(env, "ORQ_MAX_BODY_BYTES", defaults.max_body_bytes),
        max_output_bytes=_int(env, "ORQ_MAX_OUTPUT_BYTES", defaults.max_output_bytes),
        projector_batch=_int(env, "ORQ_PROJECTOR_BATCH", defaults.projector_batch),
        rate_window_s=_float(env, "ORQ_RATE_WINDOW_SECONDS", defaults.rate_window_s),
        shutdown_grace_s=_float(env, "ORQ_SHUTDOWN_GRACE_SECONDS", defaults.shutdown_grace_s),
        global_rate=_int(env, "ORQ_GLOBAL_RATE", defaults.global_rate, minimum=0),
        plans=load_plans(plans_file) if plans_file else default_plans(),
        allow_eviction=_flag(env, "ORQ_ALLOW_EVICTION"),
        accept_rewound_redis=_flag(env, "ORQ_ACCEPT_REWOUND_REDIS"),
        metrics_port=_int(env, "ORQ_METRICS_PORT", defaults.metrics_port, minimum=0),
        metrics_tenant_label=_flag(env, "ORQ_METRICS_TENANT_LABEL"),
        otel_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        allow_private_webhooks=private_networks,
        allow_private_networks=private_networks,
        smtp_url=env.get("ORQ_SMTP_URL", ""),
        notify_attempts=_int(env, "ORQ_NOTIFY_ATTEMPTS", defaults.notify_attempts),
        notify_backoff_ms=_int(env, "ORQ_NOTIFY_BACKOFF_MS", defaults.notify_backoff_ms, minimum=0),
        webhook_timeout_s=_float(env, "ORQ_WEBHOOK_TIMEOUT_S", defaults.webhook_timeout_s),
        maintenance_interval_s=_int(env, "ORQ_MAINTENANCE_INTERVAL_S", defaults.maintenance_interval_s, minimum=0),
        log_min_retention_s=_int(env, "ORQ_LOG_MIN_RETENTION_S", defaults.log_min_retention_s, minimum=0),
        dlq_max_entries=_int(env, "ORQ_DLQ_MAX_ENTRIES", defaults.dlq_max_entries, minimum=0),
        dlq_max_age_s=_int(env, "ORQ_DLQ_MAX_AGE_S", defaults.dlq_max_age_s, minimum=0),
        state_retention_s=_int(env, "ORQ_STATE_RETENTION_S", defaults.state_retention_s),
        smtp_host=env.get("ORQ_SMTP_HOST") or defaults.smtp_host,
        smtp_port=_int(env, "ORQ_SMTP_PORT", defaults.smtp_port, minimum=0),
        email_domain=(env.get("ORQ_EMAIL_DOMAIN") or defaults.email_domain).lower(),
        smtp_max_bytes=_int(env, "ORQ_SMTP_MAX_BYTES", defaults.smtp_max_bytes),
        public_url=(env.get("ORQ_PUBLIC_URL") or "").rstrip("/"),
        hook_rate_per_minute=_int(env, "ORQ_HOOK_RATE_PER_MINUTE", defaults.hook_rate_per_minute),
        hook_refused_per_minute=_int(env, "ORQ_HOOK_REFUSED_PER_MINUTE", defaults.hook_refused_per_minute),
        sql_timeout_s=_float(env, "ORQ_SQL_TIMEOUT_S", defaults.sql_timeout_s),
        watch_root=env.get("ORQ_WATCH_ROOT", ""),
        trigger_poll_s=_float(env, "ORQ_TRIGGER_POLL_SECONDS", defaults.trigger_poll_s),
        queue_sweep_s=_float(env, "ORQ_QUEUE_SWEEP_SECONDS", defaults.queue_sweep_s),
    )


def read_dev_settings(path: Path) -> dict[str, str] | None:
    """The connection settings ``orq dev`` wrote to ``path`` (None when there is no such file or it is unreadable)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else None


def with_dev_settings(env: Mapping[str, str], path: Path) -> tuple[dict[str, str], list[str]]:
    """``env`` completed from ``orq dev``'s settings file at ``path``: each of ``ORQ_REDIS_URL``,
    ``ORQ_DATABASE_URL``, ``ORQ_ADMIN_TOKEN`` and ``ORQ_PARTITIONS`` not set is taken from it. Returns the new
    environment and the names of the variables taken from the file (empty when none were)."""
    merged = dict(env)
    saved = read_dev_settings(path)
    if saved is None:
        return merged, []
    taken = []
    for key, name in _DEV_VARIABLES.items():
        if not merged.get(name) and saved.get(key):
            merged[name] = saved[key]
            taken.append(name)
    return merged, taken
