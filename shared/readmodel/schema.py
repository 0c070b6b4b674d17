"""The SQL projections (SQLAlchemy Core), valid on MariaDB/MySQL and SQLite.

Times are integer milliseconds since the epoch (exact and identical on both dialects); the API renders
them as ISO 8601. JSON columns hold what the events carried.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

metadata = MetaData()

ID = String(36)
# MySQL's BLOB stops at 64 KiB; an event body (a pinned workflow, a step output) may be larger.
Blob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
Json = JSON().with_variant(mysql.JSON(), "mysql", "mariadb")

tenants = Table(
    "tenants",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("plan", String(50), nullable=False),
    Column("paused", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", ID, primary_key=True),
    Column("tenant_id", ID, nullable=False, index=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(40), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

workflows = Table(
    "workflows",
    metadata,
    Column("id", ID, primary_key=True),
    Column("tenant_id", ID, nullable=False),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("definition", Json, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("paused", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_workflows_tenant", "tenant_id", "deleted", "id"),
)

executions = Table(
    "executions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("tenant_id", ID, nullable=False),
    Column("workflow_id", ID, nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("retry_count", Integer, nullable=False, default=0),
    Column("crash_count", Integer, nullable=False, default=0),
    Column("trigger_type", String(30), nullable=False),
    Column("parent_execution_id", ID, nullable=True),
    Column("params", Json, nullable=True),
    Column("steps_total", Integer, nullable=False),
    Column("steps_completed", Integer, nullable=False, default=0),
    Column("steps_failed", Integer, nullable=False, default=0),
    Column("current_step", Integer, nullable=True),
    Column("progress", Integer, nullable=False, default=0),
    Column("queued_at", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=True),
    Column("completed_at", BigInteger, nullable=True),
    Column("duration_ms", BigInteger, nullable=True),
    Column("result", Json, nullable=True),
    Column("error_message", LongText, nullable=True),
    Column("dead_lettered", Boolean, nullable=False, default=False),
    Column("in_dlq", Boolean, nullable=False, default=False),
    Column("dead_lettered_at", BigInteger, nullable=True),
    Column("executor", String(120), nullable=True),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_executions_tenant_status", "tenant_id", "status", "id"),
    Index("ix_executions_tenant_workflow", "tenant_id", "workflow_id", "id"),
    Index("ix_executions_tenant_dlq", "tenant_id", "in_dlq", "dead_lettered_at"),
    Index("ix_executions_tenant_completed", "tenant_id", "completed_at"),
)

execution_steps = Table(
    "execution_steps",
    metadata,
    Column("execution_id", ID, primary_key=True),
    Column("step_index", Integer, primary_key=True, autoincrement=False),
    Column("tenant_id", ID, nullable=False),
    Column("action", String(100), nullable=False),
    Column("label", String(200), nullable=True),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("started_at", BigInteger, nullable=True),
    Column("completed_at", BigInteger, nullable=True),
    Column("duration_ms", BigInteger, nullable=True),
    Column("output_data", Json, nullable=True),
    Column("error_message", LongText, nullable=True),
    # The robot that runs or ran it (``runs_on`` steps; docs/robots.md); steps run by executors name none.
    Column("worker_id", String(64), nullable=True),
    Column("child_execution_id", ID, nullable=True),  # a ``workflow`` step's child (sub-workflows)
)

execution_logs = Table(
    "execution_logs",
    metadata,
    # A log event's stream id is unique within its partition's log only: the execution is part of the key.
    Column("execution_id", ID, primary_key=True),
    Column("event_id", String(40), primary_key=True),
    Column("tenant_id", ID, nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("level", String(10), nullable=False),
    Column("message", LongText, nullable=False),
    Column("ts", BigInteger, nullable=False),
)

usage_monthly = Table(
    "usage_monthly",
    metadata,
    Column("tenant_id", ID, primary_key=True),
    Column("month", String(6), primary_key=True),
    Column("executions", Integer, nullable=False, default=0),
)

event_archive = Table(
    "event_archive",
    metadata,
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("ms", BigInteger, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(60), nullable=False),
    Column("tenant_id", ID, nullable=False),
    Column("aggregate_id", String(64), nullable=False),
    Column("body", Blob, nullable=False),
    # One execution's history (GET /api/executions/{id}/events, /logs, ?as_of=) is a range of this index.
    Index("ix_event_archive_aggregate", "partition", "aggregate_id", "ms", "seq"),
)

projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("name", String(60), primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("last_id", String(40), nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Events the projector could not project (services/projector/quarantine.py): set aside, with the checkpoint
# moved past them in the same transaction, so their partition goes on. Below a checkpoint every event is in
# exactly one of event_archive (projected) and this table (not projected). A body too large for one statement
# (MySQL's max_allowed_packet) is stored in pieces: row ``chunk`` 0 holds everything and the first piece,
# rows 1..chunks-1 the rest of the body in order (their other columns repeat row 0's).
projection_quarantine = Table(
    "projection_quarantine",
    metadata,
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("ms", BigInteger, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("chunk", Integer, primary_key=True, autoincrement=False),
    Column("stream_id", String(40), nullable=False),
    Column("type", String(60), nullable=False),
    Column("tenant_id", ID, nullable=False),
    Column("aggregate_id", String(64), nullable=False),
    Column("error", LongText, nullable=False),
    Column("body", Blob, nullable=False),
    Column("body_bytes", BigInteger, nullable=False),
    Column("chunks", Integer, nullable=False),
    Column("quarantined_at", BigInteger, nullable=False),
    Column("retries", Integer, nullable=False, default=0),
    Column("retried_at", BigInteger, nullable=True),
    # Set by `orq quarantine retry`; the projector holding the partition applies the event and clears it.
    Column("retry_requested_at", BigInteger, nullable=True),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", ID, primary_key=True),
    Column("tenant_id", ID, nullable=False),
    Column("execution_id", ID, nullable=False),
    Column("workflow_id", ID, nullable=False),
    Column("trigger", String(20), nullable=False),
    Column("channel", String(10), nullable=False),
    Column("target", String(2000), nullable=False),
    Column("status", String(10), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", LongText, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("delivered_at", BigInteger, nullable=True),
    Index("ix_notifications_tenant_execution", "tenant_id", "execution_id", "created_at"),
    Index("ix_notifications_tenant_status", "tenant_id", "status", "created_at"),
    Index("ix_notifications_tenant_created", "tenant_id", "created_at", "id"),
)

workflow_triggers = Table(
    "workflow_triggers",
    metadata,
    Column("id", ID, primary_key=True),
    Column("tenant_id", ID, nullable=False),
    Column("workflow_id", ID, nullable=False),
    Column("trigger_type", String(30), nullable=False),
    Column("config", Json, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("revision", Integer, nullable=False),
    Column("trigger_count", BigInteger, nullable=False, default=0),
    Column("last_triggered_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_workflow_triggers_tenant", "tenant_id", "deleted", "created_at", "id"),
)

# Work queues (shared/readmodel/queue_fold.py): every row is a function of one event, so the fold reads none.
work_queues = Table(
    "work_queues",
    metadata,
    Column("id", ID, primary_key=True),
    Column("tenant_id", ID, nullable=False),
    Column("name", String(200), nullable=False),
    Column("description", LongText, nullable=True),
    Column("max_retries", Integer, nullable=False),
    Column("sla_minutes", Integer, nullable=False),
    Column("abandon_after_minutes", Integer, nullable=False),
    Column("unique_reference", Boolean, nullable=False, default=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_work_queues_tenant", "tenant_id", "deleted", "created_at", "id"),
)

queue_items = Table(
    "queue_items",
    metadata,
    Column("id", ID, primary_key=True),
    Column("tenant_id", ID, nullable=False),
    Column("queue_id", ID, nullable=False),
    Column("status", String(20), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("reference", String(200), nullable=True),
    Column("deadline", BigInteger, nullable=True),
    Column("defer_until", BigInteger, nullable=True),
    Column("retry_count", Integer, nullable=False, default=0),
    Column("retry_of", ID, nullable=True),
    Column("retry_id", ID, nullable=True),
    Column("origin_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=True),
    Column("finished_at", BigInteger, nullable=True),
    Column("processing_ms", BigInteger, nullable=True),
    Column("processed_by", String(200), nullable=True),
    Column("execution_id", ID, nullable=True),
    Column("progress", Text, nullable=True),
    Column("result", Json, nullable=True),
    Column("error_message", LongText, nullable=True),
    Column("error_kind", String(20), nullable=True),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_queue_items_queue_created", "queue_id", "created_at", "id"),
    Index("ix_queue_items_queue_status", "queue_id", "status", "created_at", "id"),
    Index("ix_queue_items_queue_reference", "queue_id", "reference"),
    # A retried queue-item run finds its item (services/api/commands.py).
    Index("ix_queue_items_execution", "execution_id"),
)

queue_item_data = Table(
    "queue_item_data",
    metadata,
    Column("item_id", ID, primary_key=True),
    Column("tenant_id", ID, nullable=False),
    Column("queue_id", ID, nullable=False),
    Column("data", Json, nullable=False),
)

queue_item_history = Table(
    "queue_item_history",
    metadata,
    # An event's stream id is unique within its partition's log only: the item is part of the key.
    Column("item_id", ID, primary_key=True),
    Column("event_id", String(40), primary_key=True),
    Column("tenant_id", ID, nullable=False),
    Column("queue_id", ID, nullable=False),
    Column("type", String(40), nullable=False),
    Column("status", String(20), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("processed_by", String(200), nullable=True),
    Column("detail", LongText, nullable=True),
    # The execution processing the item as of this event (a queue_item trigger's run), so the item's detail
    # lists every execution that processed it.
    Column("execution_id", ID, nullable=True),
)

# Robots (shared/domain/robots/registry.py): registrations only. Live fields (last seen, current task) change at
# every robot call and stay in Redis; GET /api/robots joins them to these rows.
robots = Table(
    "robots",
    metadata,
    Column("id", ID, primary_key=True),
    Column("tenant_id", ID, nullable=False),
    Column("name", String(100), nullable=False),
    Column("pool", String(64), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=True),
    Index("ix_robots_tenant", "tenant_id", "deleted", "created_at", "id"),
)

# Tables a replay rebuilds (everything but the archive it replays from).
PROJECTION_TABLES = [tenants, api_keys, workflows, executions, execution_steps, execution_logs, usage_monthly,
                     notifications, workflow_triggers, work_queues, queue_items, queue_item_data, queue_item_history,
                     robots]
