"""Notifications as state changes: queue them when an execution ends, record each attempt, resend (pure).

A notification's id is derived from the log entry that ended the execution and the ``notify`` entry's
index, so a redelivered log entry yields the same ids and the unit that queues them is refused the
second time (``require_absent`` on the notification's hash): each notification is queued exactly once.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from shared.infra.clock import iso
from shared.log import keys
from shared.log.commit import Unit
from shared.log.events import (
    EventBase,
    ExecutionCompleted,
    ExecutionDeadLettered,
    ExecutionFailed,
    NotificationFailed,
    NotificationQueued,
    NotificationResendRequested,
    NotificationSent,
    NotifyOn,
)
from shared.log.workflows import NotifyDef, WorkflowDef

# Log entry types that can end an execution in a way someone may want to hear about.
TRIGGERS: dict[str, NotifyOn] = {
    "execution.completed": "completed",
    "execution.failed": "failed",
    "execution.dead_lettered": "dead_lettered",
}
EXISTS_GUARD = "notification_exists"
MAX_RESULT_BYTES = 64 * 1024

_json = msgspec.json.Encoder()


def notification_id(p: int, entry_id: str, execution_id: str, index: int) -> str:
    """Stable id of the notification ``index`` of the execution end at log entry ``entry_id``."""
    return hashlib.sha256(f"{p}:{entry_id}:{execution_id}:{index}".encode()).hexdigest()[:32]


def trigger_of(event: EventBase) -> NotifyOn | None:
    match event:
        case ExecutionCompleted():
            return "completed"
        case ExecutionFailed():
            return "failed"
        case ExecutionDeadLettered():
            return "dead_lettered"
        case _:
            return None


def payload(event: EventBase, trigger: NotifyOn, notification: str, workflow_id: str, definition: WorkflowDef) -> bytes:
    """The JSON body sent to webhooks (and summarised in emails); fixed when the notification is queued."""
    body: dict[str, Any] = {
        "id": notification,
        "event": f"execution.{trigger}",
        "tenant_id": event.tenant_id,
        "workflow_id": workflow_id,
        "workflow_name": definition.name,
        "execution_id": event.aggregate_id,
        "status": "completed" if trigger == "completed" else "failed",
        "occurred_at": iso(event.ts),
    }
    match event:
        case ExecutionCompleted():
            result = _json.encode(event.result)
            body["result"] = event.result if len(result) <= MAX_RESULT_BYTES else None
            body["duration_ms"] = event.duration_ms
        case ExecutionFailed():
            body["error"] = event.error
            body["attempt"] = event.attempt
        case ExecutionDeadLettered():
            body["error"] = event.error
            body["reason"] = event.reason
        case _:
            pass
    return _json.encode(body)


def channel_of(target: NotifyDef) -> tuple[str, str]:
    """(``"webhook"`` | ``"email"``, URL or address)."""
    if target.webhook is not None:
        return "webhook", target.webhook
    return "email", target.email or ""


def queue_units(
    *, p: int, entry_id: str, event: EventBase, workflow_id: str, def_key: str, definition: WorkflowDef, now_ms: int
) -> list[Unit]:
    """One unit per matching ``notify`` entry: the ``notification.queued`` event, the notification's hash and
    its delivery entry, refused (nothing changes) if that notification was queued before."""
    trigger = trigger_of(event)
    if trigger is None:
        return []
    units = []
    for index, target in enumerate(definition.notify):
        if trigger not in target.on:
            continue
        nid = notification_id(p, entry_id, event.aggregate_id, index)
        channel, address = channel_of(target)
        key = keys.notification(p, nid)
        unit = Unit(p).require_absent(key, EXISTS_GUARD)
        unit.event(
            NotificationQueued(
                tenant_id=event.tenant_id,
                aggregate_id=nid,
                ts=now_ms,
                execution_id=event.aggregate_id,
                workflow_id=workflow_id,
                trigger=trigger,
                channel=channel,  # type: ignore[arg-type]  # channel_of returns one of the two
                target=address,
                created_at=now_ms,
            )
        )
        unit.hset(
            key,
            {
                "tenant": event.tenant_id,
                "execution_id": event.aggregate_id,
                "workflow_id": workflow_id,
                "trigger": trigger,
                "channel": channel,
                "target": address,
                "def_key": def_key,
                "index": index,
                "payload": payload(event, trigger, nid, workflow_id, definition),
                "status": "pending",
                "attempt": 0,
                "series_start": 1,
                "created_at": now_ms,
            },
        )
        unit.xadd(keys.notify(p), {"n": nid}, ref=(key, "entry"))
        units.append(unit)
    return units


def backoff_ms(base_ms: int, series_attempt: int) -> int:
    """Delay before the attempt after ``series_attempt`` failed: ``base × 2^(n−1)``."""
    return int(base_ms * 2 ** max(0, series_attempt - 1))


def outcome_unit(
    *,
    p: int,
    notification: str,
    state: dict[str, str],
    entry_id: str,
    attempt: int,
    ok: bool,
    status_code: int | None,
    error: str,
    duration_ms: int,
    retry_in_ms: int | None,
    now_ms: int,
) -> Unit:
    """Record one attempt: ``notification.sent``, or ``notification.failed`` and either a retry (the entry
    waits on the ``backoff`` pseudo-consumer) or the end (``retry_in_ms`` None: the entry is acked).

    Guarded on the notification still waiting on this very entry, so a stale attempt changes nothing."""
    key = keys.notification(p, notification)
    stream = keys.notify(p)
    common: dict[str, Any] = {
        "tenant_id": state["tenant"],
        "aggregate_id": notification,
        "ts": now_ms,
        "execution_id": state["execution_id"],
        "workflow_id": state["workflow_id"],
        "trigger": state["trigger"],
        "channel": state["channel"],
        "target": state["target"],
        "created_at": int(state["created_at"]),
        "attempt": attempt,
        "status_code": status_code,
        "duration_ms": duration_ms,
    }
    unit = Unit(p).require(key, "entry", [entry_id], "entry").require(key, "status", ["pending", "retrying"], "status")
    if ok:
        unit.event(NotificationSent(**common))
        unit.hset(key, {"status": "sent", "attempt": attempt, "delivered_at": now_ms, "updated_at": now_ms})
    else:
        delivered = state.get("delivered_at")
        unit.event(NotificationFailed(**common, error=error, final=retry_in_ms is None, retry_in_ms=retry_in_ms,
                                      delivered_at=int(delivered) if delivered else None))
        status = "failed" if retry_in_ms is None else "retrying"
        unit.hset(key, {"status": status, "attempt": attempt, "retry_delay": retry_in_ms or 0, "updated_at": now_ms})
    if ok or retry_in_ms is None:
        unit.ack(stream, keys.GROUP_NOTIFIER, entry_id, delete=True)
        unit.hdel(key, "entry")
    else:
        unit.claim(stream, keys.GROUP_NOTIFIER, keys.CONSUMER_BACKOFF, entry_id)
    return unit


def resend_unit(*, p: int, tenant_id: str, notification: str, state: dict[str, str], now_ms: int) -> Unit:
    """A new series of attempts for a finished (sent or failed) notification, with the same body."""
    key = keys.notification(p, notification)
    attempts = int(state.get("attempt") or 0)
    delivered = state.get("delivered_at")
    unit = Unit(p).require(key, "tenant", [tenant_id], "tenant").require(key, "status", ["sent", "failed"], "status")
    unit.event(
        NotificationResendRequested(
            tenant_id=tenant_id,
            aggregate_id=notification,
            ts=now_ms,
            execution_id=state["execution_id"],
            workflow_id=state["workflow_id"],
            trigger=state["trigger"],  # type: ignore[arg-type]  # written by queue_units
            channel=state["channel"],  # type: ignore[arg-type]
            target=state["target"],
            created_at=int(state["created_at"]),
            attempts=attempts,
            delivered_at=int(delivered) if delivered else None,
        )
    )
    unit.hset(key, {"status": "pending", "series_start": attempts + 1, "updated_at": now_ms})
    unit.xadd(keys.notify(p), {"n": notification}, ref=(key, "entry"))
    return unit
