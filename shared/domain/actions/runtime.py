"""The running side of step actions, shared by the executor and ``orq robot``: the built-ins' behaviour and the
registry of plug-ins.

``http_request`` goes through the SSRF guard of ``shared/infra/ssrf.py`` (the one notifications use): the URL's
host is resolved and every address checked when the step runs, the request is pinned to a checked address,
and redirects are never followed (a 3xx is the step's output). ``allow_private``
(``ORQ_ALLOW_PRIVATE_NETWORKS``) lifts the address check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import httpx

from shared.domain.actions.schemas import (
    ActionContext,
    DelayParams,
    FailParams,
    HttpRequestParams,
    LogParams,
    PluginAction,
    SetParams,
    load_plugins,
    param_types,
    parse_params,
)
from shared.infra.errors import OrqError, StepFailed
from shared.infra.ssrf import check_url, pinned_request, resolve

Runner = Callable[[Any, ActionContext], Awaitable[Any]]
MAX_BODY_CHARS = 64 * 1024


async def _noop(_params: Any, _ctx: ActionContext) -> None:
    return None


async def _log(params: LogParams, ctx: ActionContext) -> None:
    await ctx.log(params.message, params.level)


async def _delay(params: DelayParams, _ctx: ActionContext) -> dict[str, int]:
    # The event loop's timers have millisecond granularity and may fire up to 1 ms early: sleep again until
    # the whole delay has passed, so a step's measured duration is never below what it asked for.
    until = time.perf_counter() + params.ms / 1000
    while (left := until - time.perf_counter()) > 0:
        await asyncio.sleep(left)
    return {"slept_ms": params.ms}


async def _set(params: SetParams, _ctx: ActionContext) -> dict[str, Any]:
    return params.values


async def _fail(params: FailParams, ctx: ActionContext) -> dict[str, int]:
    if params.until_attempt is None or ctx.attempt < params.until_attempt:
        raise StepFailed(params.message)
    return {"passed_on_attempt": ctx.attempt}


def _http_request(client: httpx.AsyncClient, allow_private: bool) -> Runner:
    async def run(params: HttpRequestParams, _ctx: ActionContext) -> dict[str, Any]:
        try:
            target = await resolve(check_url(params.url, "url", allow_credentials=True),
                                   allow_private=allow_private, field="url")
            response = await pinned_request(client, target, params.method, headers=params.headers,
                                            json=params.json, timeout_s=params.timeout_s)
        except OrqError as exc:  # a refused or unresolvable address: the request was never sent
            raise StepFailed(f"{params.method} {params.url}: {exc.message}") from None
        except httpx.HTTPError as exc:
            raise StepFailed(f"{params.method} {params.url}: {type(exc).__name__}: {exc}") from exc
        body: Any
        if response.headers.get("content-type", "").startswith("application/json"):
            try:
                body = response.json()
            except ValueError:
                body = response.text[:MAX_BODY_CHARS]
        else:
            body = response.text[:MAX_BODY_CHARS]
        if response.status_code >= 500:
            raise StepFailed(f"{params.method} {params.url}: HTTP {response.status_code}")
        return {"status": response.status_code, "body": body}

    return run


class Actions:
    """Name → (params type, runner) for every action this executor can run."""

    def __init__(self, client: httpx.AsyncClient, plugins: Mapping[str, PluginAction] | None = None, *,
                 allow_private: bool = False) -> None:
        plugins = load_plugins() if plugins is None else plugins
        # One client serves every tenant's steps: it must keep no cookies, or one tenant's would be sent
        # with another's requests.
        client.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.params = param_types(plugins)
        self.runners: dict[str, Runner] = {
            "noop": _noop,
            "log": _log,
            "delay": _delay,
            "set": _set,
            "http_request": _http_request(client, allow_private),
            "fail": _fail,
            **{name: plugin.run for name, plugin in plugins.items()},
        }

    def parse(self, action: str, params: Mapping[str, Any]) -> Any:
        """Rendered params to the action's params type, checked as at save time (a bad value fails the step)."""
        params_type = self.params.get(action)
        if params_type is None:
            raise StepFailed(f"unknown action {action!r}")
        try:
            return parse_params(params_type, params)
        except OrqError as exc:
            raise StepFailed(f"bad params for {action}: {exc.message}") from None

    def runner(self, action: str) -> Runner:
        runner = self.runners.get(action)
        if runner is None:
            raise StepFailed(f"unknown action {action!r}")
        return runner
