"""One error hierarchy. The API maps each to ``{"error": {"code", "message", ...}}`` in one place."""

from __future__ import annotations

from typing import Any


class OrqError(Exception):
    """Base of every error Orquesta raises on purpose."""

    status = 500
    code = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class ConfigError(OrqError):
    code = "config"


class BadRequest(OrqError):
    status = 400
    code = "bad_request"


class Unauthorized(OrqError):
    status = 401
    code = "unauthorized"


class Forbidden(OrqError):
    status = 403
    code = "forbidden"


class NotFound(OrqError):
    status = 404
    code = "not_found"


class Conflict(OrqError):
    status = 409
    code = "conflict"


class PayloadTooLarge(OrqError):
    status = 413
    code = "payload_too_large"


class ValidationFailed(OrqError):
    status = 422
    code = "validation_failed"


class QuotaExceeded(OrqError):
    status = 429
    code = "quota_exceeded"


class StepFailed(OrqError):
    """Raised by an action: the step failed (the attempt may be retried)."""

    code = "step_failed"
