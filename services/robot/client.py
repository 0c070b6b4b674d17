"""The robot protocol of DESIGN §10, client side: one method per call, answers as types, failures as errors.

Three kinds of failure, because a robot reacts to each differently:

- ``ServerUnavailable``: no answer, a timeout, 5xx or 429 — try again later (``reconnect.py``);
- ``TaskStopped``: 409 on a task route — the lease is lost, the execution cancelled or the task already
  finished; the robot stops working on it, and the call changed nothing;
- ``RequestRefused``: any other 4xx (a revoked key, a body the server does not accept) — retrying cannot help.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal

import httpx
import msgspec

from shared.infra.errors import OrqError

FailureKind = Literal["business", "application"]


class ServerUnavailable(OrqError):
    """The server did not answer, or answered 5xx/429: the call may be tried again."""

    code = "server_unavailable"

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TaskStopped(OrqError):
    """409 on a task route: stop working on this task (``lease_lost``, ``cancelled``, or already finished)."""

    code = "task_stopped"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class RequestRefused(OrqError):
    """Any other 4xx: the server will not do this, whatever the number of tries."""

    code = "request_refused"

    def __init__(self, message: str, status: int, error_code: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class Identity(msgspec.Struct, frozen=True):
    """``GET /api/robots/me``: which robot the key belongs to."""

    id: str
    name: str
    pool: str
    tenant_id: str


class Task(msgspec.Struct, frozen=True):
    """A step offered to this robot by ``tasks/next``, its params already rendered."""

    task_id: str
    execution_id: str
    step_index: int
    action: str
    params: dict[str, Any]
    attempt: int
    lease_s: float
    label: str | None = None


class RobotClient:
    """One robot's HTTP session with the API (its key on every call)."""

    def __init__(self, url: str, key: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s,
                                       headers={"Authorization": f"Bearer {key}", "User-Agent": "orq-robot"})

    async def __aenter__(self) -> RobotClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._http.aclose()

    async def me(self) -> Identity:
        response = await self._send("GET", "/api/robots/me")
        return msgspec.json.decode(response.content, type=Identity)

    async def next_task(self, wait_s: float) -> Task | None:
        """Long poll: a task, or ``None`` when the server had nothing for ``wait_s`` seconds."""
        response = await self._send("POST", "/api/robots/tasks/next", {"wait_s": wait_s},
                                    timeout_s=wait_s + self._timeout_s)
        if response.status_code == 204:
            return None
        return msgspec.json.decode(response.content, type=Task)

    async def heartbeat(self, task_id: str, progress: float | None = None, message: str | None = None) -> float:
        """Renews the task's lease; its new length in seconds."""
        body: dict[str, Any] = {}
        if progress is not None:
            body["progress"] = progress
        if message is not None:
            body["message"] = message
        response = await self._send("POST", f"/api/robots/tasks/{task_id}/heartbeat", body)
        return float(response.json().get("lease_s", 0.0))

    async def complete(self, task_id: str, output: Any) -> None:
        await self._send("POST", f"/api/robots/tasks/{task_id}/complete", {"output": output})

    async def fail(self, task_id: str, message: str, kind: FailureKind) -> None:
        await self._send("POST", f"/api/robots/tasks/{task_id}/fail", {"message": message, "kind": kind})

    async def logs(self, task_id: str, lines: list[dict[str, str]]) -> None:
        await self._send("POST", f"/api/robots/tasks/{task_id}/logs", {"lines": lines})

    async def _send(self, method: str, path: str, body: Any = None, *,
                    timeout_s: float | None = None) -> httpx.Response:
        # Encoded here (msgspec) rather than by httpx: an output json.dumps cannot encode (a datetime) still goes.
        content = None if body is None else msgspec.json.encode(body)
        headers = {} if content is None else {"Content-Type": "application/json"}
        try:
            response = await self._http.request(method, path, content=content, headers=headers,
                                                timeout=timeout_s or self._timeout_s)
        except httpx.HTTPError as exc:
            raise ServerUnavailable(f"{method} {path}: {type(exc).__name__} {exc}".rstrip()) from None
        status = response.status_code
        if status < 400:
            return response
        error_code, message = _error_of(response)
        what = " ".join(part for part in (f"{method} {path}: HTTP {status}", error_code, message and f"({message})")
                        if part)
        if status >= 500 or status == 429:
            raise ServerUnavailable(what, retry_after_s=_retry_after_s(response))
        if status == 409:
            raise TaskStopped(what, reason=error_code or "conflict")
        raise RequestRefused(what, status=status, error_code=error_code)


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` of an ``{"error": {...}}`` answer; the start of the text for anything else."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return "", response.text[:200]
    if not isinstance(error, dict):
        return "", response.text[:200]
    return str(error.get("code", "")), str(error.get("message", ""))


def _retry_after_s(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0
