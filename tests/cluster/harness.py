"""A real Redis Cluster on this machine: 6 ``redis-server`` processes (3 masters, 3 replicas) for one test run.

Everything lives in a private folder (configs, ``nodes.conf``, logs) that :meth:`LocalCluster.stop` deletes along
with the processes. The helpers are what the drills need: who owns a slot, ``kill -9`` a node and wait for its
replica to take over, and move one slot to another master while clients keep writing.
"""

from __future__ import annotations

import binascii
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from redis import Redis
from redis.exceptions import RedisError

T = TypeVar("T")

SLOTS = 16384
NODES = 6
HOST = "127.0.0.1"
BUS_OFFSET = 10000  # Redis Cluster's bus listens on port + 10000
NODE_TIMEOUT_MS = 1000
START_TIMEOUT_S = 30.0
FAILOVER_TIMEOUT_S = 30.0
MIGRATE_BATCH = 100
MIGRATE_TIMEOUT_MS = 5000
# Node ports are drawn from here so that port + 10000 stays a valid port below the usual ephemeral range.
PORT_RANGE = (20000, 29999)


def binaries() -> tuple[str | None, str | None]:
    """``redis-server`` and ``redis-cli`` on PATH (None for a missing one)."""
    return shutil.which("redis-server"), shutil.which("redis-cli")


def slot_of(tag: str) -> int:
    """Redis Cluster's slot of a hash tag (its content, without the braces): CRC16 XMODEM mod 16384."""
    return binascii.crc_hqx(tag.encode(), 0) % SLOTS


def slot_of_key(key: str) -> int:
    """The slot of a key: of its hash tag when it has a non-empty ``{...}``, else of the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return slot_of(key[start + 1:end])
    return slot_of(key)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_cluster_ports(count: int, taken: set[int] | None = None) -> list[int]:
    """``count`` ports free now on 127.0.0.1 whose bus port (port + 10000) is free too."""
    chosen: list[int] = []
    avoid = set(taken or ())
    rng = random.Random()
    for _ in range(10_000):
        port = rng.randint(*PORT_RANGE)
        if port in avoid or port in chosen:
            continue
        if _bindable(port) and _bindable(port + BUS_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"found only {len(chosen)} free port pairs of {count}")


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy (a RedisError or AssertionError counts as not yet)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (RedisError, OSError, AssertionError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not within {timeout}s: {what} (last error: {last!r})")
        time.sleep(interval)


@dataclass(frozen=True)
class NodeInfo:
    """One line of ``CLUSTER NODES`` as seen by some node."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "-" for a master
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags or "fail?" in self.flags


def parse_nodes(reply: str) -> list[NodeInfo]:
    """``CLUSTER NODES`` text → its nodes; slot fields under migration (``[slot->-id]``) are left out."""
    nodes = []
    for line in reply.strip().splitlines():
        fields = line.split()
        address = fields[1].split("@", 1)[0]
        ranges = []
        for field in fields[8:]:
            if field.startswith("["):
                continue
            lo, _, hi = field.partition("-")
            ranges.append((int(lo), int(hi or lo)))
        nodes.append(NodeInfo(fields[0], int(address.rsplit(":", 1)[1]), frozenset(fields[2].split(",")),
                              fields[3], tuple(sorted(ranges))))
    return nodes


class LocalCluster:
    """Six ``redis-server`` processes in cluster mode (3 masters with a replica each) on free local ports."""

    def __init__(self, parent: Path | None = None) -> None:
        server, cli = binaries()
        if server is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed on PATH")
        self.server_binary = server
        self.cli_binary = cli
        self.folder = Path(tempfile.mkdtemp(prefix="orq-cluster-", dir=parent))
        self.ports: list[int] = []
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    # --- life cycle -------------------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        """Start six nodes, create the cluster, and wait until every node says ok and every replica is synced."""
        try:
            self.ports = free_cluster_ports(NODES)
            for port in self.ports:
                self._spawn(port)
            for port in self.ports:
                self._wait_answers(port)
            self._redis_cli("--cluster", "create", *(f"{HOST}:{p}" for p in self.ports),
                            "--cluster-replicas", "1", "--cluster-yes")
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_answers(self, port: int) -> None:
        def answers() -> bool:
            with self.client(port) as node:
                return bool(node.ping())

        wait_until(answers, timeout=START_TIMEOUT_S, what=f"node {port} answers")

    def _spawn(self, port: int) -> None:
        home = self.folder / str(port)
        home.mkdir(exist_ok=True)
        args = [self.server_binary, "--port", str(port), "--bind", HOST, "--dir", str(home),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-replica-validity-factor", "0",
                "--save", "", "--appendonly", "no", "--logfile", "redis.log", "--daemonize", "no"]
        self.processes[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        """Kill every node still running and delete the folder."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading the topology ---------------------------------------------------------------------------

    @property
    def seed_url(self) -> str:
        """A live node's URL, for clients that discover the cluster from one node."""
        return f"redis://{HOST}:{self.live_ports()[0]}"

    def live_ports(self) -> list[int]:
        return [p for p in self.ports if self.processes[p].poll() is None]

    def client(self, port: int) -> Redis:
        """A plain (non-cluster) client of one node, decoded to ``str``: for asking a node about the cluster."""
        return Redis(host=HOST, port=port, decode_responses=True, socket_timeout=5, socket_connect_timeout=2)

    def nodes(self, port: int | None = None) -> list[NodeInfo]:
        """``CLUSTER NODES`` as one node (a live one unless given) sees it."""
        with self.client(port or self.live_ports()[0]) as node:
            return parse_nodes(str(node.execute_command("CLUSTER", "NODES")))

    def node_id(self, port: int) -> str:
        with self.client(port) as node:
            return str(node.execute_command("CLUSTER", "MYID"))

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Port → slot ranges of every master that owns slots and is not failed, as a live node sees it."""
        return {n.port: list(n.slots) for n in self.nodes() if n.is_master and n.slots and not n.failed}

    def master_of_slot(self, slot: int) -> int:
        for port, ranges in self.masters().items():
            if any(lo <= slot <= hi for lo, hi in ranges):
                return port
        raise LookupError(f"no master owns slot {slot}")

    def replicas_of(self, master_port: int) -> list[int]:
        master = self.node_id(master_port)
        return [n.port for n in self.nodes() if n.master_id == master]

    # --- health -----------------------------------------------------------------------------------------

    def _state_ok(self, port: int) -> bool:
        with self.client(port) as node:
            info = str(node.execute_command("CLUSTER", "INFO"))
        return "cluster_state:ok" in info

    def _replica_synced(self, port: int) -> bool:
        with self.client(port) as node:
            info = node.info("replication")
        if info.get("role") != "slave":
            return True
        return info.get("master_link_status") == "up" and not int(info.get("master_sync_in_progress", 0))

    def _agreed(self) -> bool:
        """Every live node sees the same masters owning the same slots, covering all 16384."""
        views = []
        for port in self.live_ports():
            views.append(sorted((n.node_id, n.slots) for n in self.nodes(port)
                                if n.is_master and n.slots and not n.failed))
        covered = sum(hi - lo + 1 for _, ranges in views[0] for lo, hi in ranges)
        return covered == SLOTS and all(view == views[0] for view in views)

    def healthy(self) -> bool:
        """cluster_state:ok on every live node, all agreeing on the slot map, every replica in sync."""
        live = self.live_ports()
        return (all(self._state_ok(p) for p in live) and self._agreed()
                and all(self._replica_synced(p) for p in live))

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        wait_until(self.healthy, timeout=timeout, what="cluster healthy on every node")

    # --- faults -----------------------------------------------------------------------------------------

    def kill9(self, port: int) -> None:
        """SIGKILL one node (its data is gone with it: no save, no AOF)."""
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def restart(self, port: int, timeout: float = FAILOVER_TIMEOUT_S) -> None:
        """Start a killed node again from its folder (its ``nodes.conf``): a master that lost its slots to a
        failover rejoins as a replica of its successor. Back when the cluster is healthy and synced again."""
        if self.processes[port].poll() is None:
            raise ValueError(f"node {port} is running")
        self._spawn(port)
        self._wait_answers(port)
        wait_until(lambda: port in {n.port for n in self.nodes() if not n.failed} and self.healthy(),
                   timeout=timeout, what=f"node {port} back in the cluster, every replica in sync")

    def wait_failover(self, old_master_port: int, timeout: float = FAILOVER_TIMEOUT_S) -> int:
        """Until a replica of the killed master is a master owning its slots and every live node is ok;
        the new master's port."""
        old_id = next(n.node_id for n in self.nodes() if n.port == old_master_port)
        replicas = {n.port for n in self.nodes() if n.master_id == old_id}

        def promoted() -> int | None:
            owners = [p for p in self.masters() if p in replicas]
            return owners[0] if owners and self.healthy() else None

        return wait_until(promoted, timeout=timeout, what=f"a replica of {old_master_port} promoted")

    def reshard(self, slot: int, to_port: int) -> None:
        """Move one slot (and its keys) to the master on ``to_port``, while clients may keep using it."""
        from_port = self.master_of_slot(slot)
        if from_port == to_port:
            raise ValueError(f"slot {slot} is already on {to_port}")
        source, target = self.node_id(from_port), self.node_id(to_port)
        if slot == self.masters()[from_port][0][0]:
            # redis-cli moves the lowest slots the source owns, so it picks this one exactly.
            self._redis_cli("--cluster", "reshard", f"{HOST}:{from_port}", "--cluster-from", source,
                            "--cluster-to", target, "--cluster-slots", "1", "--cluster-yes")
        else:
            # redis-cli's reshard cannot be told which slot to move; the documented manual sequence can.
            self._migrate_slot(slot, from_port, to_port, source, target)
        wait_until(lambda: self.master_of_slot(slot) == to_port and self.healthy(), timeout=START_TIMEOUT_S,
                   what=f"slot {slot} owned by {to_port} on every node")

    def _migrate_slot(self, slot: int, from_port: int, to_port: int, source: str, target: str) -> None:
        """CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE the keys in batches, then SETSLOT NODE everywhere
        (target first, then source, then the other masters), as the Redis Cluster spec describes."""
        with self.client(to_port) as dst, self.client(from_port) as src:
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target)
            while batch := src.execute_command("CLUSTER GETKEYSINSLOT", slot, MIGRATE_BATCH):
                src.execute_command("MIGRATE", HOST, to_port, "", 0, MIGRATE_TIMEOUT_MS, "KEYS", *batch)
            dst.execute_command("CLUSTER SETSLOT", slot, "NODE", target)
            src.execute_command("CLUSTER SETSLOT", slot, "NODE", target)
        for port in self.masters():
            if port not in (from_port, to_port):
                with self.client(port) as other:
                    other.execute_command("CLUSTER SETSLOT", slot, "NODE", target)

    def _redis_cli(self, *args: str) -> str:
        done = subprocess.run([self.cli_binary, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout
