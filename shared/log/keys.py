"""Every Redis key, stream and group name, built in one place.

All keys of a partition carry the hash tag ``{p}`` so a partition lives in one Redis Cluster slot and a
Lua script over one partition stays atomic.
"""

from __future__ import annotations

import binascii
import zlib
from collections.abc import Mapping
from functools import cache

PREFIX = "orq"
PRIORITIES = range(1, 11)

GROUP_EXECUTOR = "executor"
GROUP_PROJECTOR = "projector"
GROUP_TRIGGER = "trigger"
GROUP_NOTIFIER = "notifier"

# Pseudo-consumers of the executor group: entries parked there are not owned by a live executor.
CONSUMER_BACKOFF = "backoff"
CONSUMER_RELEASED = "released"  # handed over by an executor shutting down: the next one takes it at once
# Held while the execution waits outside any executor (a robot runs its step, or a child execution runs).
CONSUMER_PARKED = "parked"
PSEUDO_CONSUMERS = frozenset({CONSUMER_BACKOFF, CONSUMER_PARKED})


def partition_of(tenant_id: str, partitions: int) -> int:
    """Stable partition of a tenant (crc32, so every process and language agrees)."""
    return zlib.crc32(tenant_id.encode()) % partitions


# Redis Cluster has 16384 hash slots; a key's slot is CRC16 (XMODEM) of its hash tag modulo this.
CLUSTER_SLOTS = 16384
# In cluster mode, partition p of S takes the first hash tag of the form ``p``, ``p.1``, ``p.2``, ... whose slot
# falls in the p-th of S equal slot ranges; 0 means single-node mode, where the tag is plain ``p``.
_spread_over = 0


def configure(*, partitions: int, cluster: bool) -> None:
    """Choose the partitions' hash tags for a deployment (every process of it must agree: ``shared.log.redis``'s
    ``client_for`` calls this from the settings).

    A plain ``{p}`` lands wherever CRC16 puts it: with 3 masters, partitions 0-3 would sit 1, 2 and 1 on them
    (slots 13907, 9842, 5649 and 1584). ``redis-cli --cluster create`` gives each master an equal run of
    slots, so a tag chosen inside the p-th of S equal runs spreads S partitions as evenly as the master
    count allows (exactly evenly when S is a multiple of it). The mapping is in docs/scaling.md."""
    global _spread_over
    spread = partitions if cluster else 0
    if spread != _spread_over:
        _spread_over = spread
        for name in _CACHED:
            globals()[name].cache_clear()


def slot_of(hash_tag: str) -> int:
    """The Redis Cluster slot of a key whose hash tag is ``hash_tag``."""
    return binascii.crc_hqx(hash_tag.encode(), 0) % CLUSTER_SLOTS


def spread_tag(p: int, partitions: int) -> str:
    """The first of ``p``, ``p.1``, ``p.2``, ... whose slot is in the middle half of the p-th of ``partitions``
    equal slot runs (away from its edges: a master's run may start or end a slot off from S's)."""
    low, high = p * CLUSTER_SLOTS // partitions, (p + 1) * CLUSTER_SLOTS // partitions
    margin = (high - low) // 4
    low, high = low + margin, high - margin
    candidate, n = str(p), 0
    while not low <= slot_of(candidate) < high:
        n += 1
        candidate = f"{p}.{n}"
    return candidate


def hash_tag(p: int) -> str:
    """The text between the braces of partition ``p``'s keys."""
    return spread_tag(p, _spread_over) if _spread_over else str(p)


def slot_guard_of(key: str) -> str:
    """The never-written key that every script over ``key``'s partition declares last among its keys.

    A script reaches keys it does not declare (names it builds from the partition's prefix, tenants it pops
    from a ready set). While a Redis Cluster migrates the partition's slot, such a key may already be on the
    other master, and the script would fail half-way with its first writes kept. Declaring a key that never
    exists makes Redis refuse the whole call up front with TRYAGAIN (a call whose keys are partly missing in
    a migrating or importing slot), which the client retries: no script runs while its slot moves."""
    return f"{key[: key.index('}') + 1]}:slot-guard"


def partition_of_key(key: str) -> int:
    """The partition whose hash tag ``key`` carries."""
    return int(key[key.index("{") + 1 : key.index("}")].split(".", 1)[0])


@cache
def tag(p: int) -> str:
    return f"{PREFIX}:{{{hash_tag(p)}}}"


@cache
def prefix(p: int) -> str:
    """``orq:{p}:``: the scripts that manage backlogs, hand-outs and retries build the partition's keys from it
    (the names below, with the same suffixes)."""
    return f"{tag(p)}:"


@cache
def log(p: int) -> str:
    return f"{tag(p)}:log"


@cache
def work(p: int, priority: int) -> str:
    return f"{tag(p)}:work:{priority}"


def work_streams(p: int) -> list[str]:
    return [work(p, prio) for prio in PRIORITIES]


def ready(p: int, priority: int) -> str:
    """Tenants with queued work at a level: a sorted set scored by virtual time (weighted fair share)."""
    return f"{tag(p)}:ready:{priority}"


@cache
def levels(p: int) -> str:
    """Priority levels of the partition with a ready tenant (scored by level): where executors look first."""
    return f"{tag(p)}:levels"


def backlog(p: int, priority: int, tenant_id: str) -> str:
    """One tenant's queued execution ids at one level, oldest first."""
    return f"{tag(p)}:backlog:{priority}:{tenant_id}"


def virtual_time(p: int, priority: int) -> str:
    """The level's fair-share clock: the virtual time of the last tenant served (newcomers start there)."""
    return f"{tag(p)}:vt:{priority}"


@cache
def bell(p: int) -> str:
    """Rung (a one-entry stream) when work becomes available, so idle executors wake at once."""
    return f"{tag(p)}:bell"


@cache
def running(p: int) -> str:
    """Hash tenant → executions running now (dispatched and not yet ended)."""
    return f"{tag(p)}:running"


@cache
def queued(p: int) -> str:
    """Hash tenant → executions waiting in backlogs."""
    return f"{tag(p)}:queued"


@cache
def blocked(p: int) -> str:
    """Tenants with queued work but no room (paused, at their concurrency or rate limit), out of the ready sets:
    a sorted set scored by when dispatch looks at them again (0: now, e.g. a slot was freed)."""
    return f"{tag(p)}:blocked"


@cache
def due(p: int) -> str:
    """Executions waiting to retry: a sorted set of execution ids scored by when the retry is due (ms)."""
    return f"{tag(p)}:due"


def rate(p: int, tenant_id: str, minute: int) -> str:
    """Executions a tenant started in one minute (``minute`` = epoch ms // 60000); built in dispatch.lua too."""
    return f"{tag(p)}:rate:{tenant_id}:{minute}"


def parked(p: int, workflow_id: str) -> str:
    """Executions of a paused workflow set aside by the dispatcher, waiting for the workflow to resume."""
    return f"{tag(p)}:parked:{workflow_id}"


def offers(p: int, tenant_id: str, pool: str) -> str:
    """Robot tasks offered to a tenant's pool, waiting for a robot: a sorted set scored by priority, then age."""
    return f"{tag(p)}:offers:{tenant_id}:{pool}"


def task(p: int, task_id: str) -> str:
    """Hash of one robot task (an offered ``runs_on`` step): see shared/domain/robots/tasks.py."""
    return f"{tag(p)}:task:{task_id}"


@cache
def task_leases(p: int) -> str:
    """Claimed robot tasks of the partition scored by when their lease runs out (ms): what the scan re-offers."""
    return f"{tag(p)}:task_leases"


@cache
def offers_channel(p: int) -> str:
    """Pub/sub channel told ``<tenant> <pool>`` when a task is offered, so long-polling robots answer at once."""
    return f"{tag(p)}:offered"


def dlq(p: int) -> str:
    """The partition's dead-letter stream: entries ``e`` (execution id), ``tenant``, ``reason``, ``error``."""
    return f"{tag(p)}:dlq"


def entry_tenant(fields: Mapping[bytes, bytes]) -> str:
    """The tenant of a work or DLQ entry (``tenant``; entries written before the field was renamed say ``t``,
    which in the log means the event type)."""
    raw = fields.get(b"tenant", fields.get(b"t", b""))
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def tenant(p: int, tenant_id: str) -> str:
    return f"{tag(p)}:tenant:{tenant_id}"


def workflow(p: int, workflow_id: str) -> str:
    return f"{tag(p)}:wf:{workflow_id}"


def workflow_version(p: int, workflow_id: str, version: int) -> str:
    """Immutable definition of one saved version: what queued executions pin."""
    return f"{tag(p)}:wfdef:{workflow_id}:{version}"


def execution(p: int, execution_id: str) -> str:
    return f"{tag(p)}:exec:{execution_id}"


def idempotency(p: int, tenant_id: str, key: str) -> str:
    return f"{tag(p)}:idem:{tenant_id}:{key}"


def usage(p: int, tenant_id: str, month: str) -> str:
    """Executions admitted this month (``month`` as ``YYYYMM``)."""
    return f"{tag(p)}:usage:{tenant_id}:{month}"


def cancel_channel(p: int) -> str:
    """Pub/sub channel on which cancel commands reach the executor running the execution."""
    return f"{tag(p)}:cancel"


def replication_probe(p: int) -> str:
    """Written (with a short TTL) to ask the replicas whether they have everything of the partition's master
    so far (``ORQ_REDIS_WAIT_REPLICAS``: see shared/log/commit.py ``confirm_replicated``)."""
    return f"{tag(p)}:replication-probe"


def projector_lock(p: int) -> str:
    """Held by the one projector that applies this partition's log (projection needs order)."""
    return f"{tag(p)}:lock:projector"


def global_rate(window: int) -> str:
    """Executions started in one window across the deployment (``ORQ_GLOBAL_RATE``); not partitioned."""
    return f"{PREFIX}:global:rate:{window}"


def tenant_index() -> str:
    """Set of every tenant id (admin listing); not partitioned on purpose: admin-only and tiny."""
    return f"{PREFIX}:tenants"


def projector_members() -> str:
    """Sorted set of live projector instances (score = last heartbeat, ms): they share partitions fairly."""
    return f"{PREFIX}:projectors"


@cache
def notify(p: int) -> str:
    """Notification deliveries waiting to be attempted (group ``notifier``; retries wait on ``backoff``)."""
    return f"{tag(p)}:notify"


def notification(p: int, notification_id: str) -> str:
    """Hash of one notification: what the notifier and ``POST /api/notifications/{id}/resend`` check."""
    return f"{tag(p)}:notif:{notification_id}"


def maintenance_lock() -> str:
    """Held for one interval by the instance that ran the scheduled maintenance (once across instances)."""
    return f"{PREFIX}:maintenance:lock"


def maintenance_report() -> str:
    """JSON report of the last maintenance run (shown by ``orq status``)."""
    return f"{PREFIX}:maintenance:last"


# --- triggers (shared/domain/triggers/definitions.py, services/trigger) -----------------------------------------------


def trigger(p: int, trigger_id: str) -> str:
    """Hash of one trigger: what firing and ``PUT|DELETE /api/triggers/{id}`` check (shared/domain/triggers/)."""
    return f"{tag(p)}:trigger:{trigger_id}"


def triggers_of_type(p: int, trigger_type: str) -> str:
    """Hash trigger id → tenant id of the partition's live triggers of one type (what the services watch)."""
    return f"{tag(p)}:triggers:{trigger_type}"


def trigger_token(p: int, token_sha256: str) -> str:
    """Webhook or mailbox token (by its SHA-256) → trigger id; looked up in every partition."""
    return f"{tag(p)}:trigtoken:{token_sha256}"


def trigger_claim(p: int, trigger_id: str, what: str) -> str:
    """Set once by the unit that handled ``what`` (a schedule tick, a signature, a mail, a source event)."""
    return f"{tag(p)}:trigger:{trigger_id}:claim:{what}"


def trigger_files(p: int, trigger_id: str) -> str:
    """Hash file name → "<mtime_ns>:<size>" of the files a file watcher has fired for (survives restarts)."""
    return f"{tag(p)}:trigger:{trigger_id}:files"


def trigger_rate(p: int, trigger_id: str, minute: int) -> str:
    """Webhook calls to one trigger in one minute (``minute`` = epoch ms // 60000)."""
    return f"{tag(p)}:trigger:{trigger_id}:rate:{minute}"


def trigger_refused_rate(p: int, trigger_id: str, minute: int) -> str:
    """Refused calls (bad or missing signature) to one webhook trigger in one minute: a budget of their own."""
    return f"{tag(p)}:trigger:{trigger_id}:refused:{minute}"


def trigger_chains(p: int, tenant_id: str) -> str:
    """Hash trigger id → watched workflow id of a tenant's ``workflow_completed`` triggers (``rev``: its version)."""
    return f"{tag(p)}:chains:{tenant_id}"


# --- work queues (shared/queues*.py) ------------------------------------------------------------------------


def queue(p: int, queue_id: str) -> str:
    """Hash of one work queue: ``tenant``, ``name``, ``deleted``, ``snap`` (msgpack QueueSnapshot), settings."""
    return f"{tag(p)}:queue:{queue_id}"


def queue_names(p: int, tenant_id: str) -> str:
    """Hash casefolded queue name → queue id of a tenant's live queues (names are unique per tenant)."""
    return f"{tag(p)}:qnames:{tenant_id}"


def queue_refs(p: int, queue_id: str) -> str:
    """Hash reference → first item id that carried it (never forgotten: unique references stay unique)."""
    return f"{tag(p)}:qrefs:{queue_id}"


def queue_ready(p: int, queue_id: str) -> str:
    """Sorted set of claimable items, all scored 0 so members sort by their claim-order rank (lex)."""
    return f"{tag(p)}:qready:{queue_id}"


def queue_deferred(p: int, queue_id: str) -> str:
    """Sorted set of items waiting for their ``defer_until`` (score, ms); members are ranks as in the ready set."""
    return f"{tag(p)}:qdeferred:{queue_id}"


def queue_item(p: int, item_id: str) -> str:
    """Hash of one queue item (``queue_item(p, "")`` is the prefix the claim op in commit.lua appends ids to)."""
    return f"{tag(p)}:qitem:{item_id}"


def queue_due(p: int) -> str:
    """Sorted set of in-progress items of the partition, scored by when they count as abandoned (ms)."""
    return f"{tag(p)}:qdue"


def trigger_runs(p: int) -> str:
    """Hash execution id → "<trigger id> <item id>" of queue items being processed by ``queue_item`` triggers."""
    return f"{tag(p)}:trigger_runs"


# --- robots (shared/domain/robots/registry.py, services/api/routes/robots.py) -----------------------------------------


def robot(p: int, robot_id: str) -> str:
    """Hash of one robot: ``tenant``, ``name``, ``pool``, ``key_hash``, ``created_at``; the task protocol keeps
    its live fields there too (``last_seen`` ms, ``task`` while it holds one). Deleted with the robot."""
    return f"{tag(p)}:robot:{robot_id}"


def robot_names(p: int, tenant_id: str) -> str:
    """Hash casefolded robot name → robot id of a tenant's robots (names are unique per tenant)."""
    return f"{tag(p)}:robotnames:{tenant_id}"


# Every cached key builder: their values depend on the tags ``configure`` chose.
_CACHED = [name for name, value in list(globals().items()) if hasattr(value, "cache_clear")]
