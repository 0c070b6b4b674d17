"""Atomic units of change and the group-committer that sends them to Redis.

A :class:`Unit` is "these guards must hold, then append these events and change this state" on one
partition. Appending an event and changing the aggregate state it implies happen in the same Lua call, so
no reader sees one without the other. The :class:`Committer` batches every unit submitted while the
previous batch was in flight into one script call per partition: many executions share one round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from shared.log import keys
from shared.log.events import EventBase, encode, type_of
from shared.log.redis import (
    REPLICA_WAIT_MS,
    PipelinedScript,
    node_of,
    queue_replica_wait,
    replicas_after_probe,
    run_pipeline,
)

log = logging.getLogger(__name__)

_packer = msgspec.msgpack.Encoder()
Value = str | int | float | bytes


def load_lua(package: str, name: str) -> str:
    """The Lua script ``name`` from ``package``'s ``lua`` directory: each script lives with the package that owns it."""
    return (resources.files(package) / "lua" / name).read_text()


# The line of commit.lua that the op libraries replace (after its ``local OPS = {}``).
_LIBRARIES_MARK = "--@libraries\n"


def _compose(libraries: Sequence[str] = ()) -> str:
    """commit.lua with the op ``libraries`` (Lua sources registering ``OPS[kind]``) in place, each in its own block."""
    core = load_lua("shared.log", "commit.lua")
    assert core.count(_LIBRARIES_MARK) == 1, "commit.lua has one library marker"
    return core.replace(_LIBRARIES_MARK, "".join(f"do\n{library}\nend\n" for library in libraries))


@dataclass(frozen=True, slots=True)
class Applied:
    """The unit ran: its events got these stream ids."""

    raw_ids: list[bytes]

    @property
    def event_ids(self) -> list[str]:
        return [_s(i) for i in self.raw_ids]


@dataclass(frozen=True, slots=True)
class Refused:
    """A guard failed: nothing was changed. ``label`` names the guard, ``actual`` what it found."""

    label: str
    actual: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An idempotency key was already used: ``stored`` is the reply recorded the first time."""

    stored: bytes


Outcome = Applied | Refused | Duplicate


@dataclass(slots=True)
class Unit:
    """Guards, then operations, applied atomically to partition ``p``."""

    p: int
    guards: list[list[Value]] = field(default_factory=list)
    ops: list[list[Any]] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)
    events: list[EventBase] = field(default_factory=list)  # as appended: what the unit records, not decoded again

    def _arg(self, value: Value) -> Any:
        # Binary values go to the script as separate arguments; the op carries their index.
        if isinstance(value, bytes):
            self.blobs.append(value)
            return [len(self.blobs)]
        return value

    def absorb(self, other: Unit) -> Unit:
        """Append ``other``'s guards and operations (same partition): one atomic unit of both."""
        assert other.p == self.p, "a unit spans one partition"
        offset = len(self.blobs)
        self.guards += other.guards
        for op in other.ops:
            self.ops.append([[arg[0] + offset] if isinstance(arg, list) else arg for arg in op])
        self.blobs += other.blobs
        self.events += other.events
        return self

    # --- guards ---------------------------------------------------------------------------------------------
    def require(self, key: str, field_name: str, allowed: Sequence[str], label: str) -> Unit:
        """``HGET key field`` must be one of ``allowed`` ("" stands for a missing field)."""
        self.guards.append(["in", key, field_name, label, *allowed])
        return self

    def require_absent(self, key: str, label: str) -> Unit:
        self.guards.append(["absent", key, label])
        return self

    def require_exists(self, key: str, label: str) -> Unit:
        self.guards.append(["exists", key, label])
        return self

    def idempotent(self, key: str) -> Unit:
        """If ``key`` holds a reply already, skip the unit and return that reply."""
        self.guards.append(["idem", key])
        return self

    def within_hash_limit(self, key: str, field_name: str, amount: int, limit: int, label: str) -> Unit:
        """The counter in ``key``'s ``field_name`` plus ``amount`` must not pass ``limit`` (0 = unlimited)."""
        self.guards.append(["hlimit", key, field_name, amount, limit, label])
        return self

    def within_quota(self, key: str, amount: int, limit: int, label: str = "quota") -> Unit:
        """The counter at ``key`` plus ``amount`` must not pass ``limit`` (0 = unlimited)."""
        self.guards.append(["quota", key, amount, limit, label])
        return self

    # --- operations -----------------------------------------------------------------------------------------
    def op(self, kind: str, *args: Value) -> Unit:
        """Append an op of ``kind``: a generic one of commit.lua or one an op library defines (a Committer
        without that library refuses the whole batch). Binary arguments go to the script as blobs."""
        self.ops.append([kind, *(self._arg(arg) for arg in args)])
        return self

    def event(self, event: EventBase) -> Unit:
        self.ops.append(["log", keys.log(self.p), type_of(event), self._arg(encode(event))])
        self.events.append(event)
        return self

    def hset(self, key: str, mapping: Mapping[str, Value]) -> Unit:
        flat: list[Any] = ["hset", key]
        for k, v in mapping.items():
            flat.append(k)
            flat.append(self._arg(v) if type(v) is bytes else v)
        self.ops.append(flat)
        return self

    def hsetnx(self, key: str, field_name: str, value: Value) -> Unit:
        self.ops.append(["hsetnx", key, field_name, self._arg(value)])
        return self

    def hincrby(self, key: str, field_name: str, amount: int = 1) -> Unit:
        self.ops.append(["hincrby", key, field_name, amount])
        return self

    def hdel(self, key: str, *fields: str) -> Unit:
        self.ops.append(["hdel", key, *fields])
        return self

    def ring(self, p: int) -> Unit:
        """Wake idle executors: work may have become available."""
        self.ops.append(["ring", keys.bell(p)])
        return self

    def xadd(self, stream: str, entry: Mapping[str, Value], ref: tuple[str, str] | None = None) -> Unit:
        """Append to any stream; ``ref=(hash key, field)`` records the new id there."""
        flat: list[Value] = ["xadd", stream, ref[0] if ref else "", ref[1] if ref else ""]
        for k, v in entry.items():
            flat += (k, self._arg(v))
        self.ops.append(flat)
        return self

    def xdel_recorded(self, stream: str, key: str, field_name: str) -> Unit:
        """Delete the entry of ``stream`` whose id ``key``'s ``field_name`` recorded (see ``xadd(ref=…)``)."""
        self.ops.append(["xdel_ref", stream, key, field_name])
        return self

    def ack(self, stream: str, group: str, entry_id: str, delete: bool = True) -> Unit:
        self.ops.append(["xack", stream, group, entry_id, 1 if delete else 0])
        return self

    def claim(self, stream: str, group: str, consumer: str, entry_id: str) -> Unit:
        """Hand a pending entry to ``consumer`` (e.g. the ``backoff`` pseudo-consumer); resets its idle time."""
        self.ops.append(["xclaim", stream, group, consumer, entry_id])
        return self

    def set(self, key: str, value: Value, ttl_s: int = 0) -> Unit:
        self.ops.append(["set", key, self._arg(value), ttl_s])
        return self

    def incrby(self, key: str, amount: int, ttl_s: int = 0) -> Unit:
        self.ops.append(["incrby", key, amount, ttl_s])
        return self

    def delete(self, key: str) -> Unit:
        self.ops.append(["del", key])
        return self

    def persist(self, key: str) -> Unit:
        """Remove ``key``'s TTL, if it has one (an ended execution's state revived before its retention ran out)."""
        self.ops.append(["persist", key])
        return self

    def publish(self, channel: str, message: str) -> Unit:
        self.ops.append(["publish", channel, message])
        return self

    def zadd(self, key: str, score: int | float, member: str) -> Unit:
        self.ops.append(["zadd", key, score, member])
        return self

    def zrem(self, key: str, *members: str) -> Unit:
        self.ops.append(["zrem", key, *members])
        return self


def _script_args(units: list[Unit]) -> list[bytes]:
    structure: list[list[Any]] = []
    blobs: list[bytes] = []
    for unit in units:
        structure.append([unit.guards, unit.ops, 1 + len(blobs)])
        blobs += unit.blobs
    return [_packer.encode(structure), *blobs]


def _outcome(raw: list[Any]) -> Outcome:
    status = int(raw[0])
    if status == 1:
        return Applied(raw[1:])
    if status == 2:
        stored = raw[1]
        return Duplicate(stored if isinstance(stored, bytes) else str(stored).encode())
    return Refused(_s(raw[1]), _s(raw[2]))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NotReplicated(RedisError):
    """Fewer replicas than ``ORQ_REDIS_WAIT_REPLICAS`` confirmed a commit within ``REPLICA_WAIT_MS``: it is on
    its master (``outcome`` says how it went there) but may not survive a failover, so it is not answered as
    done. The API answers 503 (an ``Idempotency-Key`` makes the client's retry safe); the executor waits for
    the replicas (``Committer.confirm_replicated``) rather than sending the commit again."""

    def __init__(self, p: int, outcome: Outcome | None, confirmed: int, wanted: int) -> None:
        super().__init__(f"only {confirmed} of {wanted} replicas confirmed the write within {REPLICA_WAIT_MS} ms "
                         "(ORQ_REDIS_WAIT_REPLICAS)")
        self.p = p
        self.outcome = outcome


class Committer:
    """Group commit: units submitted while a batch is in flight go together in the next one.

    One script call per partition per batch, all partitions' calls in one pipeline. ``max_batch`` bounds
    the size of one call so a huge burst does not block Redis for long. ``libraries`` are Lua sources that
    register domain op kinds (``OPS[kind]``) in commit.lua; without them only the generic ops exist.
    """

    def __init__(
        self, redis: Redis, max_batch: int = 512, *, wait_replicas: int = 0, libraries: Sequence[str] = ()
    ) -> None:
        self._redis = redis
        self._wait_replicas = wait_replicas
        self._script = PipelinedScript(_compose(libraries))
        self._max_batch = max_batch
        self._pending: list[tuple[Unit, asyncio.Future[Outcome]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._in_flight = 0

    @property
    def idle(self) -> bool:
        """Nothing waiting to be sent and nothing sent still waiting for its reply."""
        return not self._pending and not self._in_flight

    async def commit(self, unit: Unit) -> Outcome:
        """Apply one unit (batched with whatever else is pending) and return its outcome."""
        return await self._enqueue(unit)

    async def commit_all(self, units: Sequence[Unit]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._enqueue(u) for u in units)))

    def submit(self, unit: Unit) -> asyncio.Future[Outcome]:
        """Queue a unit without waiting for it; units are applied in submission order."""
        future = self._enqueue(unit)
        future.add_done_callback(_consume_exception)
        return future

    def _enqueue(self, unit: Unit) -> asyncio.Future[Outcome]:
        if self._closed:
            raise RuntimeError("committer is closed")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((unit, future))
        self._wakeup.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="committer")
        return future

    async def close(self) -> None:
        """Flush what is pending, then stop."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                self._in_flight = len(batch)
                try:
                    await self._flush(batch)
                finally:
                    self._in_flight = 0
            if self._closed:
                return

    async def _flush(self, batch: list[tuple[Unit, asyncio.Future[Outcome]]]) -> None:
        by_partition: dict[int, list[tuple[Unit, asyncio.Future[Outcome]]]] = {}
        for item in batch:
            by_partition.setdefault(item[0].p, []).append(item)
        try:
            calls = [(keys.log(p), _script_args([u for u, _ in items])) for p, items in by_partition.items()]

            masters: list[str] = []  # the masters a WAIT was queued for, in the order of their replies

            def build(pipe: Pipeline) -> None:
                for log_key, args in calls:
                    self._script.queue(pipe, [log_key], args)
                masters[:] = queue_replica_wait(pipe, self._redis, [log_key for log_key, _ in calls],
                                                self._wait_replicas)

            replies = await run_pipeline(self._redis, build, [self._script])
            replies, waits = replies[: len(calls)], replies[len(calls) :]
            short = {node: int(n) for node, n in zip(masters, waits, strict=True) if int(n) < self._wait_replicas}
        except Exception as exc:  # the whole batch failed to reach Redis: every waiter learns why
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (p, items), reply in zip(by_partition.items(), replies, strict=True):
            replicated = short.get(node_of(self._redis, keys.log(p))) if short else None
            for (_, future), raw in zip(items, reply, strict=True):
                if future.done():
                    continue
                if replicated is None:
                    future.set_result(_outcome(raw))
                else:
                    future.set_exception(NotReplicated(p, _outcome(raw), replicated, self._wait_replicas))

    async def confirm_replicated(self, p: int) -> None:
        """Raise :class:`NotReplicated` unless the replicas now have everything partition ``p``'s master wrote
        (a probe write and its WAIT: see ``replicas_after_probe``)."""
        confirmed = await replicas_after_probe(self._redis, keys.replication_probe(p), self._wait_replicas)
        if confirmed < self._wait_replicas:
            raise NotReplicated(p, None, confirmed, self._wait_replicas)


def _consume_exception(future: asyncio.Future[Outcome]) -> None:
    # Fire-and-forget submitters may never await: mark the exception retrieved; later units see it anyway.
    if not future.cancelled():
        future.exception()
