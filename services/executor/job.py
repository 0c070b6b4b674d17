"""A unit of work handed to this executor: the work entry plus the execution state it needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.domain.executions.pinned import PinnedDefinitions
from shared.domain.executions.state import ExecutionState, from_hash, new_execution
from shared.log import keys
from shared.log.workflows import WorkflowDef


@dataclass(slots=True)
class Job:
    """One execution entry delivered to this executor, with its state as read at dispatch (then kept current by
    the run: every commit it makes folds its events into ``state``)."""

    p: int
    stream: str
    entry_id: str
    execution_id: str
    state: ExecutionState
    definition: WorkflowDef | None
    previous_owner: str = ""
    order: int = 0
    priority: int = field(init=False)
    tenant_id: str = field(init=False)
    state_key: str = field(init=False)
    fence: str = field(init=False)

    def __post_init__(self) -> None:
        self.priority = self.state.priority
        self.tenant_id = self.state.tenant
        self.state_key = keys.execution(self.p, self.execution_id)
        # This hand-out's token: every commit checks it (none when dispatch found no state to fence).
        self.fence = str(self.state.fence) if self.state.fence else ""

    @property
    def recovered(self) -> bool:
        """Taken from a consumer that stopped renewing its lease: that executor died."""
        return self.previous_owner not in ("", keys.CONSUMER_RELEASED, *keys.PSEUDO_CONSUMERS)

    def params(self) -> dict[str, Any]:
        return self.state.decoded_params()

    def outputs(self) -> dict[int, Any]:
        return self.state.decoded_outputs()


def jobs_from_reply(p: int, streams: list[str], reply: list[Any], cache: PinnedDefinitions, order: int) -> list[Job]:
    """Parse the dispatch script's reply into jobs.

    The reply carries each definition once; ``in_reply`` keeps them for the later jobs of the same reply,
    whatever the cache's bound.
    """
    jobs = []
    in_reply: dict[str, WorkflowDef | None] = {}
    for k, entry_id, exec_id, flat, body, previous in reply:
        it = iter(flat)
        execution_id = exec_id.decode()
        state = from_hash(p, execution_id, dict(zip(it, it, strict=True)))
        definition = None
        if state is not None:
            definition = in_reply.get(state.def_key) or cache.decoded(state.def_key, body)
            in_reply[state.def_key] = definition
        jobs.append(Job(p, streams[int(k) - 1], entry_id.decode(), execution_id,
                        state or new_execution(p, execution_id), definition, previous.decode(), order))
        order += 1
    return jobs
