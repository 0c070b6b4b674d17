"""``orq api``: the HTTP API under uvicorn, until ``stop`` is set; with ``--workers N``, N such processes on one port.

uvicorn runs with the transport limits of ``services/api/transport.py`` (request head size, stalled
clients) and the API's SQL engine bounds every query by ``ORQ_SQL_TIMEOUT_S``.

Several workers (:func:`serve_workers`): the parent process serves nothing itself. It starts N ordinary
``orq api`` processes (``--as-worker``), each a whole API with its own Redis pool, SQL engine, feed reader and
robot offer listener, each binding its own listening socket on the same port with ``SO_REUSEPORT``. Why not
uvicorn's own ``workers=N``: it runs each worker through ``uvicorn.Server.run`` with uvicorn's signal
handling, so a worker would lose this module's drain (robot long polls answered 204 before the server
stops, then the service's committer flushed) and the shared bootstrap; and its workers share one listening
socket, from which the first worker to wake accepts every connection waiting (the event loop accepts all it
finds per wake-up: asyncio up to the backlog, libuv under uvloop until none is left), so a burst of keep-alive
clients can land on one worker. With ``SO_REUSEPORT`` the
kernel gives each connection to one socket by a hash of its addresses: many clients spread evenly.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator

import uvicorn

from services.api.app import create_app
from services.api.transport import GuardedHttpTools, HeadLimit
from shared.infra.errors import ConfigError, OrqError
from shared.infra.settings import Settings
from shared.service.bootstrap import Service

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 10
# Each reply of a worker names its process, so an operator can tell which worker answered (logs, a slow reply).
WORKER_HEADER = "X-Orq-Worker"
MAX_WORKERS = 64
# A worker that stops on its own is started again, unless it lived less than this: a worker failing at start
# (Redis unreachable, a refused durability check) would fail again, so the API stops and says so, as one
# process would.
MIN_UPTIME_S = 5.0
RESTART_DELAY_S = 1.0
# SIGTERM'd workers drain for up to GRACEFUL_SHUTDOWN_S, then close their clients: past this, they are killed.
WORKER_STOP_TIMEOUT_S = GRACEFUL_SHUTDOWN_S + 20
PARENT_CHECK_S = 1.0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the caller's ``stop`` event is the one way to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` that other processes of this user may bind too (``SO_REUSEPORT``); uvicorn
    makes it listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.set_inheritable(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(settings: Settings, stop: asyncio.Event, host: str, port: int, *, worker: bool = False) -> None:
    """Serve until ``stop`` is set; then stop accepting, let in-flight requests finish, and flush commits.

    ``worker``: one of the processes of :func:`serve_workers`: bind with ``SO_REUSEPORT`` beside its siblings,
    and name this process in every reply (``X-Orq-Worker: <pid>``)."""
    sockets = [reuse_port_socket(host, port)] if worker else None
    orphaned = asyncio.create_task(_stop_when_orphaned(stop), name="api-parent-watch") if worker else None
    try:
        async with Service(settings, stop, sql=True, sql_timeout_s=settings.sql_timeout_s) as service:
            app = create_app(settings, service.redis, service.engine, committer=service.committer)
            config = uvicorn.Config(
                HeadLimit(app),
                host=host,
                port=port,
                http=GuardedHttpTools,
                log_config=None,
                lifespan="on",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                server_header=False,
                headers=[(WORKER_HEADER, str(os.getpid()))] if worker else None,
            )
            server = _Server(config)
            serving = asyncio.create_task(server.serve(sockets=sockets), name="uvicorn")
            stopping = asyncio.create_task(stop.wait(), name="api-stop")
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            app.state.api.offers.shut()  # open robot long polls answer 204 now rather than being cut off
            server.should_exit = True
            stopping.cancel()
            await serving
    finally:
        if orphaned is not None:
            orphaned.cancel()
        for sock in sockets or []:
            sock.close()  # uvicorn closes it when it served; not when the service failed to open
        log.info("api stopped")


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker whose parent died without stopping it (SIGKILL) stops itself, draining as on SIGTERM: no worker
    goes on holding the port for an ``orq api`` that no longer exists."""
    parent = os.getppid()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PARENT_CHECK_S)
        if os.getppid() != parent:
            log.warning("api worker: parent %d is gone; stopping", parent)
            stop.set()


def worker_command(host: str, port: int, log_level: str, log_format: str) -> list[str]:
    """The command line of one worker of ``orq api --workers N`` (the environment is the parent's)."""
    return [sys.executable, "-m", "orquesta", "--log-level", log_level, "--log-format", log_format,
            "api", "--host", host, "--port", str(port), "--as-worker"]


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port someone listens on already. Without this, workers binding with ``SO_REUSEPORT`` would
    silently share the port with another ``orq api --workers`` of the same user."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free for uvicorn too
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"{host}:{port} is in use") from exc
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


class WorkerFailed(OrqError):
    """A worker stopped on its own before it had run ``MIN_UPTIME_S`` (its log says why)."""

    code = "worker_failed"


async def _stop_worker(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then wait for the worker's drain; SIGKILL past ``WORKER_STOP_TIMEOUT_S``."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), WORKER_STOP_TIMEOUT_S)
    except TimeoutError:
        log.warning("api worker pid %d did not stop in %d s: killed", process.pid, WORKER_STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _run_worker(slot: int, command: list[str], stop: asyncio.Event) -> None:
    """Keep worker ``slot`` running until ``stop``; then stop it and wait for its drain."""
    while not stop.is_set():
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(*command)
        log.info("api worker %d started (pid %d)", slot, process.pid)
        exited = asyncio.create_task(process.wait(), name=f"api-worker-{slot}")
        stopping = asyncio.create_task(stop.wait(), name=f"api-worker-{slot}-stop")
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not exited.done() or stop.is_set():
                await _stop_worker(process)  # also when this task is cancelled: no worker outlives the parent
        if stop.is_set():
            return
        returncode = exited.result()
        if time.monotonic() - started < MIN_UPTIME_S:
            raise WorkerFailed(f"api worker {slot} exited with {returncode} at start; its log above says why",
                               returncode=returncode)
        log.warning("api worker %d (pid %d) exited with %d; starting another", slot, process.pid, returncode)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RESTART_DELAY_S)


async def serve_workers(stop: asyncio.Event, workers: int, command: list[str], host: str, port: int) -> None:
    """Run ``workers`` API processes (``command``) on ``host:port`` until ``stop`` is set, then stop them all
    (each drains as one API does) and return. A worker failing at start stops the others and raises
    :class:`WorkerFailed`."""
    _check_port_free(host, port)
    log.info("api on http://%s:%d with %d workers (parent pid %d)", host, port, workers, os.getpid())
    slots = [asyncio.create_task(_run_worker(n, command, stop), name=f"api-slot-{n}") for n in range(1, workers + 1)]
    try:
        done, _ = await asyncio.wait(slots, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # a worker that failed at start: raised here, the others stopped in ``finally``
    finally:
        stop.set()
        await asyncio.gather(*slots, return_exceptions=True)
        log.info("api workers stopped")
