"""A unit of work handed to this executor: the work entry plus the execution state it needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from shared import keys
from shared.pinned import PinnedDefinitions
from shared.workflows import WorkflowDef

_decode_any = msgspec.msgpack.Decoder()


@dataclass(slots=True)
class Job:
    """One execution entry delivered to this executor, with its state (raw hash) as read at dispatch."""

    p: int
    stream: str
    entry_id: str
    execution_id: str
    state: dict[bytes, bytes]
    definition: WorkflowDef | None
    previous_owner: str = ""
    order: int = 0
    priority: int = field(init=False)
    tenant_id: str = field(init=False)
    state_key: str = field(init=False)
    fence: str = field(init=False)

    def __post_init__(self) -> None:
        self.priority = int(self.state.get(b"priority", b"10"))
        self.tenant_id = self.state.get(b"tenant", b"").decode()
        self.state_key = keys.execution(self.p, self.execution_id)
        self.fence = self.state.get(b"fence", b"").decode()  # this hand-out's token: every commit checks it

    @property
    def recovered(self) -> bool:
        """Taken from a consumer that stopped renewing its lease: that executor died."""
        return self.previous_owner not in ("", keys.CONSUMER_RELEASED, *keys.PSEUDO_CONSUMERS)

    def int_field(self, name: bytes, default: int = 0) -> int:
        raw = self.state.get(name)
        return int(raw) if raw else default

    def params(self) -> dict[str, Any]:
        raw = self.state.get(b"params")
        return _decode_any.decode(raw) if raw else {}

    def outputs(self) -> dict[int, Any]:
        return {int(k[4:]): _decode_any.decode(v) for k, v in self.state.items() if k.startswith(b"out:")}


def jobs_from_reply(p: int, streams: list[str], reply: list[Any], cache: PinnedDefinitions, order: int) -> list[Job]:
    """Parse the dispatch script's reply into jobs.

    The reply carries each definition once; ``in_reply`` keeps them for the later jobs of the same reply,
    whatever the cache's bound.
    """
    jobs = []
    in_reply: dict[bytes, WorkflowDef | None] = {}
    for k, entry_id, exec_id, flat, body, previous in reply:
        it = iter(flat)
        state: dict[bytes, bytes] = dict(zip(it, it, strict=True))
        definition = None
        if state:
            def_key = state.get(b"def_key", b"")
            definition = in_reply.get(def_key) or cache.decoded(def_key.decode(), body)
            in_reply[def_key] = definition
        jobs.append(Job(p, streams[int(k) - 1], entry_id.decode(), exec_id.decode(), state, definition,
                        previous.decode(), order))
        order += 1
    return jobs
