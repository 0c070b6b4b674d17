"""The execution aggregate: its typed state, the one fold that changes it, and its Redis hash.

``evolve(state, event)`` is the only way an execution's recorded state changes: a commit appends events with
:func:`record`, which folds them and writes the hash fields they set, so the hash is always the fold of the
log. The projection folds the same function (shared/readmodel/projection.py) for the columns both hold.

Some fields are not the fold of events but of the hand-out protocol, moved by the scripts that hand work out and
take it back (dispatch, release, untask, the fence of every revoking command): ``fence``, ``owner``, ``seq``,
``work_stream``/``work_id``, ``task``, ``parked`` and ``dlq_id`` (see :data:`LEASE_FIELDS`). They are read here
like the rest, but written only by those named operations.

Hash ``orq:{p}:exec:<id>`` (all strings): the fields of :class:`ExecutionState` by name, the outputs as
``out:<i>`` (msgpack), ``params`` (msgpack), booleans as ``"1"``/``"0"``; a ``None`` field is absent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from shared.domain.aggregates import Status
from shared.log import keys
from shared.log.commit import Unit, Value
from shared.log.events import (
    EventBase,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionDeadLettered,
    ExecutionDlqPurged,
    ExecutionFailed,
    ExecutionPriorityChanged,
    ExecutionQueued,
    ExecutionRecovered,
    ExecutionRequeued,
    ExecutionRetrying,
    ExecutionStarted,
    StepCompleted,
    StepFailed,
    StepWaiting,
)

LOWEST_PRIORITY = 10  # what a hash without a priority (never written whole: a stray write) is taken to have
OUTPUT_PREFIX = "out:"
LEASE_FIELDS = frozenset({"fence", "owner", "seq", "work_stream", "work_id", "task", "parked", "dlq_id"})

_packer = msgspec.msgpack.Encoder()


class ExecutionState(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One execution as commands and runners see it (``p`` and ``id`` name it; the rest is its hash)."""

    p: int
    id: str
    tenant: str = ""
    workflow_id: str = ""
    def_key: str = ""  # the pinned, immutable definition
    priority: int = LOWEST_PRIORITY
    status: Status | None = None  # None: the hash was never written whole
    attempt: int = 1  # the attempt now running or next to run, from 1 in each attempt series
    retry_count: int = 0
    crash_count: int = 0
    step: int = 0  # the step to resume from
    queued_at: int = 0
    started_at: int | None = None  # the first start of the current series
    params: bytes = b""  # msgpack
    outputs: dict[int, bytes] = {}  # msgpack output of each completed step, by index
    retry_at: int | None = None  # ms: when the retry after a failed attempt is due (as the ``due`` index says)
    max_attempts: int | None = None  # only when the run overrides its workflow's policy
    dead_lettered: bool = False
    trigger_type: str = "api"
    parent: str | None = None  # a child execution's parent, its step, and the nesting depth
    parent_step: int | None = None
    depth: int = 0
    waits_for: str | None = None  # the child a parked parent waits for, since when
    waiting_since: int | None = None
    # The hand-out protocol's fields (LEASE_FIELDS): never changed by evolve.
    fence: int = 0  # moves on at every hand-out and every revoking command; every commit of a run checks it
    owner: str = ""  # the executor consumer it is handed out to, exactly while it counts as running
    seq: int = 0  # lifecycle commits its runs have made (a commit sent again after a lost reply applies once)
    work_stream: str = ""  # its work entry, while it has one
    work_id: str = ""
    task: str = ""  # its robot task, while one is offered or claimed
    parked: str = ""  # why it waits outside any executor: robot, child or resume
    dlq_id: str = ""  # its DLQ entry

    @property
    def key(self) -> str:
        return keys.execution(self.p, self.id)

    def decoded_params(self) -> dict[str, Any]:
        return msgspec.msgpack.decode(self.params) if self.params else {}

    def decoded_outputs(self) -> dict[int, Any]:
        return {index: msgspec.msgpack.decode(body) for index, body in self.outputs.items()}


def new_execution(p: int, execution_id: str) -> ExecutionState:
    """The state before an execution's first event."""
    return ExecutionState(p=p, id=execution_id)


Changes = dict[str, Any]  # field name → new value (None: removed); "outputs": the outputs added, by index


def evolve(state: ExecutionState, event: EventBase) -> ExecutionState:
    """The state after ``event``: the one definition of how each execution event changes an execution (an event
    that changes nothing here, a log line or a step start, leaves it as it was)."""
    return _applied(state, changes_of(state, event))


def changes_of(state: ExecutionState, event: EventBase) -> Changes:
    """The fields ``event`` sets on ``state`` (whether or not they held that value already)."""
    fold = _FOLDS.get(type(event))
    return {} if fold is None else fold(state, event)


def record(unit: Unit, state: ExecutionState, *events: EventBase) -> ExecutionState:
    """Append ``events`` to ``unit`` and write the hash fields they set; the state after them.

    Every field an event sets is written, whether or not ``state`` already held that value, so a command that
    knows only what it guards on (the status it observed) writes what its event means, not a difference."""
    after = state
    written: Changes = {}
    added: dict[int, bytes] = {}  # the outputs these events add (written alone, not every output again)
    for event in events:
        unit.event(event)
        fold = _FOLDS.get(type(event))
        if fold is None:
            continue
        changes = fold(after, event)
        after = _applied(after, changes)
        written.update(changes)
        added.update(changes.get("outputs", ()))
    if added:
        written["outputs"] = added
    # A new execution's hash is written whole: the scripts read fields (priority, status) that may equal a default.
    fields, dropped = (to_hash(after), []) if state.status is None else _hash_fields(written)
    if fields:
        unit.hset(state.key, fields)
    if dropped:
        unit.hdel(state.key, *dropped)
    return after


def _applied(state: ExecutionState, changes: Changes) -> ExecutionState:
    if not changes:
        return state
    if "outputs" in changes:
        changes = {**changes, "outputs": {**state.outputs, **changes["outputs"]}}
    return msgspec.structs.replace(state, **changes)


def _queued(state: ExecutionState, e: ExecutionQueued) -> Changes:
    return {"tenant": e.tenant_id, "workflow_id": e.workflow_id,
            "def_key": keys.workflow_version(state.p, e.workflow_id, e.workflow_version), "priority": e.priority,
            "status": Status.QUEUED, "attempt": 1, "retry_count": 0, "crash_count": 0, "step": 0, "queued_at": e.ts,
            "params": _packer.encode(e.params), "trigger_type": e.trigger_type, "dead_lettered": False,
            "max_attempts": e.max_attempts, "parent": e.parent_execution_id, "parent_step": e.parent_step,
            "depth": e.depth}


def _started(state: ExecutionState, e: ExecutionStarted) -> Changes:
    changes: Changes = {"status": Status.RUNNING}
    if state.retry_at is not None:
        changes["retry_at"] = None
    if state.started_at is None:
        changes["started_at"] = e.ts  # the series' first start
    return changes


def _step_completed(state: ExecutionState, e: StepCompleted) -> Changes:
    changes: Changes = {"step": e.step_index + 1, "outputs": {e.step_index: _packer.encode(e.output)}}
    return {**changes, **_not_waiting(state)}


def _step_failed(state: ExecutionState, e: StepFailed) -> Changes:
    # Not let pass: a retry or the DLQ follows, saying where to resume.
    return {"step": e.step_index + 1, **_not_waiting(state)} if e.continued else _not_waiting(state)


def _not_waiting(state: ExecutionState) -> Changes:
    return {"waits_for": None, "waiting_since": None} if state.waits_for is not None else {}


def _retrying(state: ExecutionState, e: ExecutionRetrying) -> Changes:
    changes: Changes = {"status": Status.RETRYING, "attempt": e.next_attempt, "retry_count": state.retry_count + 1,
                        "retry_at": e.ts + e.delay_ms}
    return changes if e.resume_step is None else {**changes, "step": e.resume_step}


def _failed(state: ExecutionState, e: ExecutionFailed) -> Changes:
    changes: Changes = {"status": Status.FAILED}
    if e.dead_lettered:
        changes["dead_lettered"] = True
    return changes if e.resume_step is None else {**changes, "step": e.resume_step}


def _requeued(state: ExecutionState, e: ExecutionRequeued) -> Changes:
    # A new series: its duration counts from its own start, not from the DLQ's wait.
    return {"status": Status.QUEUED, "attempt": 1, "dead_lettered": False, "queued_at": e.ts, "priority": e.priority,
            "started_at": None}


_FOLDS: dict[type[EventBase], Callable[[ExecutionState, Any], Changes]] = {
    ExecutionQueued: _queued,
    ExecutionStarted: _started,
    ExecutionRecovered: lambda s, e: {"crash_count": e.crash_count},
    StepCompleted: _step_completed,
    StepFailed: _step_failed,
    StepWaiting: lambda s, e: {"waits_for": e.child_execution_id, "waiting_since": e.ts},
    ExecutionRetrying: _retrying,
    ExecutionFailed: _failed,
    ExecutionDeadLettered: lambda s, e: {"dead_lettered": True},
    ExecutionCompleted: lambda s, e: {"status": Status.COMPLETED},
    ExecutionCancelled: lambda s, e: {"status": Status.CANCELLED},
    ExecutionPriorityChanged: lambda s, e: {"priority": e.priority},
    ExecutionRequeued: _requeued,
    ExecutionDlqPurged: lambda s, e: {"dead_lettered": False},
}


def park(unit: Unit, key: str, why: str, *, task: str = "") -> None:
    """The execution at ``key`` waits outside any executor, ``why``: for a robot's ``task``, a child, or to
    resume."""
    unit.hset(key, {"parked": why, **({"task": task} if task else {})})


def set_parked(unit: Unit, state: ExecutionState, why: str, *, task: str = "") -> ExecutionState:
    """:func:`park` ``state``'s execution; the state after it."""
    park(unit, state.key, why, task=task)
    return msgspec.structs.replace(state, parked=why, task=task or state.task)


def revoke(unit: Unit, key: str) -> None:
    """Move the fence on: whatever holds a hand-out of the execution at ``key`` can commit nothing more."""
    unit.hincrby(key, "fence", 1)


def number(unit: Unit, key: str, seq: int) -> None:
    """Record that the execution's runs have made ``seq`` lifecycle commits (with the commit that makes it)."""
    unit.hset(key, {"seq": seq})


def forget_work(unit: Unit, key: str) -> None:
    """The execution's work entry is gone (its runner acked it in the same unit)."""
    unit.hdel(key, "work_stream", "work_id")


def unparked(state: ExecutionState) -> ExecutionState:
    """The state once its robot task and parking are taken away (``untask`` writes it: ops.py)."""
    return msgspec.structs.replace(state, parked="", task="")


def clear_parked(unit: Unit, state: ExecutionState) -> ExecutionState:
    """An executor took it back (or it ended): it waits no longer."""
    unit.hdel(state.key, "parked")
    return msgspec.structs.replace(state, parked="")


# --- the hash -------------------------------------------------------------------------------------------------

_FIELDS = frozenset(ExecutionState.__struct_fields__) - {"p", "id", "outputs"}
_NAMES = {name.encode(): name for name in _FIELDS}
EVOLVED_FIELDS = tuple(f for f in ExecutionState.__struct_fields__ if f not in LEASE_FIELDS and f not in ("p", "id"))


def from_hash(p: int, execution_id: str, raw: Mapping[Any, Any]) -> ExecutionState | None:
    """The state in an ``HGETALL`` reply (bytes or str keys and values); None for an empty one (unknown)."""
    if not raw:
        return None
    fields: dict[str, Any] = {"p": p, "id": execution_id}
    outputs: dict[int, bytes] = {}
    for key, value in raw.items():
        name = _NAMES.get(key)  # a known field as redis-py returns it (bytes): no decoding, no prefix test
        if name is None:
            name = key.decode() if isinstance(key, bytes) else key
            if name.startswith(OUTPUT_PREFIX):
                outputs[int(name[len(OUTPUT_PREFIX):])] = _binary(value)
                continue
            if name not in _FIELDS:
                continue
        if name == "params":
            fields[name] = _binary(value)
        elif name == "dead_lettered":
            fields[name] = value in (b"1", "1")
        else:
            fields[name] = value.decode() if isinstance(value, bytes) else value
    fields["outputs"] = outputs
    # msgspec turns the hash's strings into the struct's ints and statuses (in C: this runs for every hand-out).
    return msgspec.convert(fields, ExecutionState, strict=False)


def _binary(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def to_hash(state: ExecutionState, *, lease: bool = False) -> dict[str, Value]:
    """Every present field of ``state`` as its hash holds it, defaults included (a state written whole: a new
    execution; with ``lease``, one restored from SQL)."""
    whole: dict[str, Value] = {}
    for name in (*EVOLVED_FIELDS, *sorted(LEASE_FIELDS)) if lease else EVOLVED_FIELDS:
        value = getattr(state, name)
        if name == "outputs":
            whole.update({f"{OUTPUT_PREFIX}{index}": body for index, body in value.items()})
        elif value is not None and not (name in LEASE_FIELDS and value == ""):
            whole[name] = _hash_value(value)
    return whole


def _hash_fields(changes: Changes) -> tuple[dict[str, Value], list[str]]:
    """The hash fields to set and to delete for ``changes``."""
    fields: dict[str, Value] = {}
    dropped: list[str] = []
    for name, value in changes.items():
        kind = type(value)
        if kind is int or kind is str or kind is bytes:  # as the hash holds them (the common case: no conversion)
            fields[name] = value
        elif value is None:
            dropped.append(name)
        elif name == "outputs":
            fields.update({f"{OUTPUT_PREFIX}{index}": body for index, body in value.items()})
        else:
            fields[name] = _hash_value(value)
    return fields, dropped


def _hash_value(value: Any) -> Value:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, Status):
        return value.value
    return value  # type: ignore[no-any-return]


async def read_execution(redis: Redis, p: int, execution_id: str,
                         fields: Sequence[str] = ()) -> ExecutionState | None:
    """The one reader of an execution's hash; None when Redis does not know it (never queued, or dropped).

    ``fields`` reads only those (a cheap look at a large execution's status); the rest keep their defaults.
    """
    key = keys.execution(p, execution_id)
    if not fields:
        return from_hash(p, execution_id, await redis.hgetall(key))
    values = await redis.hmget(key, list(fields))
    return from_hash(p, execution_id, {name: value for name, value in zip(fields, values, strict=True)
                                       if value is not None})
