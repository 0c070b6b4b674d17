"""Partition locks for projectors, and stream reads fenced by them.

One projector applies a partition at a time (a projection needs its events in order). The lock is a key
set with ``SET NX PX`` holding the owner's token and renewed while held. Reads and take-overs run as Lua
scripts that first check the token, so a projector that lost its lock (a long pause past the TTL) can read
nothing more: once it notices, its only leftovers are entries in its pending list, which the next owner
claims on take-over and which the checkpoint compare-and-set keeps from being applied twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from shared.log import keys
from shared.log.commit import load_lua
from shared.log.consumer import Record
from shared.log.redis import text

# A partition's lock expires this long after its holder last renewed it (every ~3 s, and on every read).
LOCK_TTL_MS = 10_000

# The read and the ack share one Lua function, put in front of each script.
_ACK_UPTO = load_lua("services.projector", "projector_ack_upto.lua")


@dataclass(frozen=True, slots=True)
class ReadResult:
    """A batch read (own pending entries first, then new): records in id order and every id read (entries
    trimmed meanwhile have an id but no record); or nothing, and the stream's last id to wait after."""

    records: list[Record]
    ids: list[str]
    last_id: str


class PartitionLocks:
    """Locks ``projector_lock(p)`` held with ``token``, and reads of ``orq:{p}:log`` fenced by them."""

    def __init__(self, redis: Redis, *, token: str, ttl_ms: int, group: str = keys.GROUP_PROJECTOR) -> None:
        self.redis = redis
        self.token = token
        self.ttl_ms = ttl_ms
        self.group = group
        self._renew = redis.register_script(load_lua("services.projector", "projector_lock_renew.lua"))
        self._release = redis.register_script(load_lua("services.projector", "projector_lock_release.lua"))
        self._take_over = redis.register_script(load_lua("services.projector", "projector_take_over.lua"))
        self._read = redis.register_script(_ACK_UPTO + load_lua("services.projector", "projector_read.lua"))
        self._ack = redis.register_script(_ACK_UPTO + load_lua("services.projector", "projector_ack.lua"))

    async def acquire(self, p: int) -> bool:
        return bool(await self.redis.set(keys.projector_lock(p), self.token, nx=True, px=self.ttl_ms))

    async def renew(self, p: int) -> bool:
        return bool(await self._renew(keys=[keys.projector_lock(p)], args=[self.token, self.ttl_ms]))

    async def release(self, p: int) -> None:
        await self._release(keys=[keys.projector_lock(p)], args=[self.token])

    async def holder(self, p: int) -> str | None:
        value = await self.redis.get(keys.projector_lock(p))
        return None if value is None else text(value)

    async def take_over(self, p: int, consumer: str) -> int | None:
        """Claim every pending entry of the group on ``p``'s log to ``consumer``; None if the lock is not ours."""
        claimed = await self._take_over(
            keys=[keys.projector_lock(p), keys.log(p)], args=[self.token, self.ttl_ms, self.group, consumer]
        )
        return None if int(claimed) < 0 else int(claimed)

    async def read(self, p: int, consumer: str, count: int, ack_upto: str = "") -> ReadResult | None:
        """Ack ``consumer``'s entries up to ``ack_upto``, then read one batch of ``p``'s log; None if the lock
        is not ours (then nothing was acked or read)."""
        reply = await self._read(
            keys=[keys.projector_lock(p), keys.log(p)],
            args=[self.token, self.ttl_ms, self.group, consumer, count, ack_upto],
        )
        if not isinstance(reply, list):
            return None
        if int(reply[0]) == 0:
            return ReadResult([], [], text(reply[1]))
        records: list[Record] = []
        ids: list[str] = []
        for raw_id, flat in reply[1]:
            entry_id = raw_id.decode()
            ids.append(entry_id)
            if not flat:
                continue
            if len(flat) == 4 and flat[0] == b"t" and flat[2] == b"d":  # as shared.log.commit writes them
                records.append(Record(entry_id, flat[1].decode(), flat[3]))
            else:
                fields = {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}
                records.append(Record(entry_id, text(fields.get(b"t")), fields.get(b"d", b"")))
        return ReadResult(records, ids, ids[-1])

    async def ack(self, p: int, consumer: str, upto: str) -> None:
        """Ack ``consumer``'s pending entries of ``p``'s log up to ``upto`` (applied, or skipped as applied)."""
        await self._ack(keys=[keys.log(p)], args=[self.group, consumer, upto])
