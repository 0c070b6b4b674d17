"""``orq dev``: every service in one process, on an embedded Redis and SQLite, with a demo tenant.

It writes how to reach it (Redis URL, database URL, API URL, admin token) to ``<data folder>/dev.json``, which
every other ``orq`` command run from the same folder reads when ``ORQ_REDIS_URL``/``ORQ_DATABASE_URL`` are not
set (``shared.infra.settings.with_dev_settings``), and removes it when it stops. ``orq replay`` against a running
``orq dev`` asks it to pause its projector (the ``replay.request`` file below), rebuilds, and lets it resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from shared.infra.embedded_redis import EmbeddedRedis
from shared.infra.errors import ConfigError
from shared.infra.settings import DEV_SETTINGS_FILE, Settings, read_dev_settings
from shared.readmodel.db import create_engine, create_schema

log = logging.getLogger(__name__)

# A replay run against this instance writes its pid here; the projector stops (releasing its partition locks)
# and the instance answers with PROJECTOR_PAUSED until the request file is gone (or its writer has died).
REPLAY_REQUEST = "replay.request"
PROJECTOR_PAUSED = "projector.paused"
PAUSE_POLL_S = 0.2
PAUSE_TIMEOUT_S = 60.0


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_dev(folder: Path) -> dict[str, str] | None:
    """The settings of the ``orq dev`` running from ``folder`` (its data folder), or None."""
    saved = read_dev_settings(folder / DEV_SETTINGS_FILE)
    if saved is None or not saved.get("pid", "").isdigit():
        return None
    return saved if pid_alive(int(saved["pid"])) else None


def ensure_port_free(host: str, port: int, what: str, hint: str) -> None:
    """Raise a one-line :class:`ConfigError` naming ``port`` if it cannot be bound (checked before anything
    starts, so a busy port never ends in a cascade of service tracebacks)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio and uvicorn bind: TIME_WAIT is fine
        try:
            s.bind((host, port))
        except OSError as exc:
            why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise ConfigError(f"{what} port {port} on {host} {why}; {hint}") from None


async def serve_dev(settings: Settings, stop: asyncio.Event, *, host: str, port: int, data_dir: str) -> None:
    """Start Redis, then api, executor, projector, trigger and notifier; print how to reach them; run until ``stop``."""
    from services.api.server import serve as serve_api
    from services.executor.worker import serve as serve_executor
    from services.notifier.service import serve as serve_notifier
    from services.projector.projector import serve as serve_projector
    from services.trigger.service import serve as serve_trigger

    logging.getLogger("httpx").setLevel(logging.WARNING)  # no request lines inside the banner
    quiet = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    for logger in quiet:  # until the banner is out: startup chatter and the demo tenant's requests would bury it
        logger.setLevel(logging.WARNING)
    folder = Path(data_dir).resolve()
    other = running_dev(folder)
    if other is not None:
        raise ConfigError(f"orq dev is already running from {folder} (pid {other['pid']}, {other.get('api_url')})")
    ensure_port_free(host, port, "API", "stop what holds it or choose another with --port")
    ensure_port_free(settings.smtp_host, settings.smtp_port, "SMTP",
                     "stop what holds it, choose another with ORQ_SMTP_PORT, or ORQ_SMTP_PORT=0 for no mail listener")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (REPLAY_REQUEST, PROJECTOR_PAUSED):
        (folder / stale).unlink(missing_ok=True)
    redis_server = EmbeddedRedis(folder / "redis")
    await redis_server.start()
    settings = replace(
        settings,
        redis_url=redis_server.url,
        database_url=f"sqlite+aiosqlite:///{folder / 'orq.db'}",
        admin_token=_persisted_admin_token(folder),
        allow_private_networks=True, allow_private_webhooks=True,  # steps and webhooks may call local servers
    )
    settings_file = folder / DEV_SETTINGS_FILE
    try:
        await _create_schema_once(settings.database_url)
        services = [
            asyncio.create_task(serve_api(settings, stop, host=host, port=port), name="api"),
            asyncio.create_task(serve_executor(settings, stop), name="executor"),
            asyncio.create_task(_pausable(serve_projector, settings, stop, folder), name="projector"),
            asyncio.create_task(serve_trigger(settings, stop), name="trigger"),
            asyncio.create_task(serve_notifier(settings, stop), name="notifier"),
        ]
        base = f"http://{host}:{port}"
        demo_key, demo_workflow = await _demo_tenant(base, settings.admin_token, folder)
        _write_settings(settings_file, settings, base)
        mail = (f"  mail:        smtp://{settings.smtp_host}:{settings.smtp_port} (email triggers: <token>@"
                f"{settings.email_domain})\n" if settings.smtp_port else "")
        print(
            f"\nOrquesta is running.\n  dashboard:   {base}/\n  API:         {base}/api\n"
            f"  admin token: {settings.admin_token}\n  demo key:    {demo_key}\n"
            f"  try:         curl -H 'Authorization: Bearer {demo_key}' -d '{{\"params\": {{\"name\": \"Ada\"}}}}' "
            f"{base}/api/workflows/{demo_workflow}/execute\n"
            f"{mail}"
            f"  redis:       {settings.redis_url}\n"
            f"  database:    {settings.database_url}\n"
            f"  settings:    {settings_file} (read by orq status, events, replay, dlq ... run from here)\n"
            f"  data:        {folder}\n"
            "  network:     private and loopback addresses open to http_request steps and webhooks "
            "(ORQ_ALLOW_PRIVATE_NETWORKS=1, development only)\n"
            "  Writing workflows: docs/workflows.md\nPress Ctrl-C to stop.\n",
            flush=True,
        )
        for logger in quiet:
            logger.setLevel(logging.NOTSET)
        done, _ = await asyncio.wait([*services, asyncio.create_task(stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in services and task.exception() is not None:
                log.error("service %s failed", task.get_name(), exc_info=task.exception())
        stop.set()
        await asyncio.gather(*services, return_exceptions=True)
    finally:
        settings_file.unlink(missing_ok=True)
        redis_server.stop()


def _write_settings(path: Path, settings: Settings, api_url: str) -> None:
    """What another ``orq`` command run from here needs to reach this instance; private (it holds the token)."""
    body = {"redis_url": settings.redis_url, "database_url": settings.database_url, "api_url": api_url,
            "admin_token": settings.admin_token, "partitions": settings.partitions, "pid": os.getpid()}
    partial = path.with_suffix(".tmp")
    partial.touch(mode=0o600)
    partial.write_text(json.dumps(body, indent=2) + "\n")
    partial.replace(path)


def _replay_requested(folder: Path) -> bool:
    request = folder / REPLAY_REQUEST
    try:
        pid = int(request.read_text().strip() or "0")
    except (OSError, ValueError):
        return False
    if pid and pid_alive(pid):
        return True
    request.unlink(missing_ok=True)  # left by a replay that died: resume
    return False


async def _pausable(serve: Callable[[Settings, asyncio.Event], Coroutine[Any, Any, None]], settings: Settings,
                    stop: asyncio.Event, folder: Path) -> None:
    """The projector, stopped (its partition locks released) while an ``orq replay`` asks for it."""
    while True:
        pause = asyncio.Event()
        running = asyncio.create_task(serve(settings, pause), name="projector")
        while not (stop.is_set() or running.done() or _replay_requested(folder)):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PAUSE_POLL_S)
        pause.set()
        await running  # a failure propagates: serve_dev reports it
        if stop.is_set() or not _replay_requested(folder):
            return
        log.info("projector paused for orq replay")
        (folder / PROJECTOR_PAUSED).write_text(str(os.getpid()))
        try:
            while _replay_requested(folder) and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), PAUSE_POLL_S)
        finally:
            (folder / PROJECTOR_PAUSED).unlink(missing_ok=True)
        if stop.is_set():
            return
        log.info("projector resumed after orq replay")


@contextlib.asynccontextmanager
async def projector_paused(folder: Path, timeout_s: float = PAUSE_TIMEOUT_S) -> AsyncIterator[None]:
    """Ask the ``orq dev`` running from ``folder`` to pause its projector; resume it on leaving."""
    request = folder / REPLAY_REQUEST
    request.write_text(str(os.getpid()))
    try:
        deadline = time.monotonic() + timeout_s
        while not (folder / PROJECTOR_PAUSED).exists():
            if time.monotonic() > deadline:
                raise ConfigError(f"orq dev did not pause its projector within {timeout_s:.0f} s")
            await asyncio.sleep(0.1)
        yield
    finally:
        request.unlink(missing_ok=True)


def _persisted_admin_token(folder: Path) -> str:
    path = folder / "admin_token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    path.write_text(token)
    path.chmod(0o600)
    return token


async def _create_schema_once(database_url: str) -> None:
    """Before the services start: on a new data folder they would otherwise all create it at once."""
    engine = create_engine(database_url)
    try:
        await create_schema(engine)
    finally:
        await engine.dispose()


async def _demo_tenant(base: str, admin_token: str, folder: Path) -> tuple[str, str]:
    """The demo tenant's key and its "hello" workflow: the ones saved in ``folder`` if Redis still knows the key,
    else a new tenant's."""
    path = folder / "demo.json"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        for _ in range(200):
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        if path.exists():
            saved = json.loads(path.read_text())
            key = str(saved["api_key"])
            me = await client.get("/api/tenants/me", headers={"Authorization": f"Bearer {key}"})
            if me.status_code == 200:
                return key, str(saved.get("workflow_id", "<workflow id>"))
        created = await client.post(
            "/api/tenants", json={"name": "demo", "plan": "pro"}, headers={"Authorization": f"Bearer {admin_token}"}
        )
        created.raise_for_status()
        body = created.json()
        workflow = await client.post(
            "/api/workflows",
            headers={"Authorization": f"Bearer {body['api_key']}"},
            json={"name": "hello", "steps": [
                {"action": "log", "label": "greet", "params": {"message": "hello {{ params.name }}"}},
                {"action": "delay", "label": "work", "params": {"ms": 500}},
                {"action": "set", "label": "result", "params": {"values": {"greeted": "{{ params.name }}"}}},
            ]},
        )
        workflow.raise_for_status()
        workflow_id = str(workflow.json()["id"])
        path.write_text(json.dumps({"tenant_id": body["id"], "api_key": body["api_key"], "workflow_id": workflow_id}))
        path.chmod(0o600)
        return str(body["api_key"]), workflow_id
