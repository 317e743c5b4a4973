"""OpenAI-shaped errors: every answer under ``/v1`` that is not a success has this body."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from qwen_core.errors import BackendUnavailable
from qwen_core.scheduler import Busy

CODES = {400: None, 401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed", 413: None, 429: None}


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        headers: dict | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.type, self.param, self.headers = status, type_, param, headers or {}
        self.code = code if code is not None else CODES.get(status)

    def body(self) -> dict:
        """The JSON error body."""
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The error as a response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def busy_error(exc: Busy) -> ApiError:
    """429 with Retry-After for a full queue or a rate limit."""
    return ApiError(429, str(exc), "rate_limit_error", headers={"Retry-After": str(int(exc.retry_after + 0.5))})


def validation_error(exc: ValidationError) -> ApiError:
    """A 400 naming the first offending param (``messages.0.role``) and why."""
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err.get("loc", ()))
    message = str(err.get("msg")).removeprefix("Value error, ")
    return ApiError(400, f"{param}: {message}" if param else message, param=param or None)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape."""

    error: ErrorDetail


ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "invalid request (the message names the offending param)"),
        (401, "missing or invalid credentials"),
        (404, "unknown model"),
        (413, "request body too large"),
        (429, "busy or rate limited (see Retry-After)"),
        (503, "the model is being switched (see Retry-After)"),
    )
}


def generation_error(exc: BaseException, prefix: str = "Generation failed") -> ApiError:
    """The API error for a reply that could not run: 503 + ``Retry-After`` when no backend server can
    take it now (every remote endpoint down), else 500."""
    if isinstance(exc, BackendUnavailable):
        wait = str(max(1, int(exc.retry_after + 0.5)))
        return ApiError(503, f"{prefix}: {exc}", "server_error", headers={"Retry-After": wait})
    return ApiError(500, f"{prefix}: {exc}", "server_error")
