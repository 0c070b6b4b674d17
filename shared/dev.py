"""``orq dev``: every service in one process, on an embedded Redis and SQLite, with a demo tenant."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import replace
from pathlib import Path

import httpx

from shared.db import create_engine, create_schema
from shared.embedded_redis import EmbeddedRedis
from shared.settings import Settings

log = logging.getLogger(__name__)


async def serve_dev(settings: Settings, stop: asyncio.Event, *, host: str, port: int, data_dir: str) -> None:
    """Start Redis, then api, executor, projector, trigger and notifier; print how to reach them; run until ``stop``."""
    from services.api.server import serve as serve_api
    from services.executor.worker import serve as serve_executor
    from services.notifier.service import serve as serve_notifier
    from services.projector.projector import serve as serve_projector
    from services.trigger.service import serve as serve_trigger

    folder = Path(data_dir).resolve()
    redis_server = EmbeddedRedis(folder / "redis")
    await redis_server.start()
    settings = replace(
        settings,
        redis_url=redis_server.url,
        database_url=f"sqlite+aiosqlite:///{folder / 'orq.db'}",
        admin_token=_persisted_admin_token(folder),
        allow_private_networks=True, allow_private_webhooks=True,  # steps and webhooks may call local servers
    )
    await _create_schema_once(settings.database_url)
    services = [
        asyncio.create_task(serve_api(settings, stop, host=host, port=port), name="api"),
        asyncio.create_task(serve_executor(settings, stop), name="executor"),
        asyncio.create_task(serve_projector(settings, stop), name="projector"),
        asyncio.create_task(serve_trigger(settings, stop), name="trigger"),
        asyncio.create_task(serve_notifier(settings, stop), name="notifier"),
    ]
    try:
        base = f"http://{host}:{port}"
        demo_key, demo_workflow = await _demo_tenant(base, settings.admin_token, folder)
        print(
            f"\nOrquesta is running.\n  dashboard:   {base}/\n  API:         {base}/api\n"
            f"  admin token: {settings.admin_token}\n  demo key:    {demo_key}\n"
            f"  try:         curl -H 'Authorization: Bearer {demo_key}' -d '{{\"params\": {{\"name\": \"Ada\"}}}}' "
            f"{base}/api/workflows/{demo_workflow}/execute\n"
            f"  mail:        smtp://{settings.smtp_host}:{settings.smtp_port} (email triggers: <token>@"
            f"{settings.email_domain})\n"
            f"  data:        {folder}\n"
            "  network:     private and loopback addresses open to http_request steps and webhooks "
            "(ORQ_ALLOW_PRIVATE_NETWORKS=1, development only)\n"
            "  Writing workflows: docs/workflows.md\nPress Ctrl-C to stop.\n",
            flush=True,
        )
        done, _ = await asyncio.wait([*services, asyncio.create_task(stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in services and task.exception() is not None:
                log.error("service %s failed", task.get_name(), exc_info=task.exception())
        stop.set()
        await asyncio.gather(*services, return_exceptions=True)
    finally:
        redis_server.stop()


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
