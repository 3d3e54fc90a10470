"""HTTP errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


class ApiError(Exception):
    """An error answered to the client with ``status`` and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorBody(error=detail).model_dump()

    def json_bytes(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False, separators=(",", ":")).encode()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def model_not_found(param: str = "model") -> ApiError:
    """The one 404 for every model a tenant cannot use: unknown, another tenant's, malformed.
    It never echoes the name, so all of them give byte-identical bodies."""
    return ApiError(
        404,
        "The model does not exist or you do not have access to it.",
        param=param,
        code="model_not_found",
    )


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "Missing or invalid API key: send 'Authorization: Bearer KEY'.",
        type="authentication_error",
        code="invalid_api_key",
    )


def forbidden(message: str) -> ApiError:
    return ApiError(403, message, type="permission_error", code="forbidden")


def queue_full(share: int | None = None) -> ApiError:
    """429: the queue is full, or (``share``) the caller holds all the places it may."""
    message = "The server is at capacity (request queue full); retry shortly."
    if share is not None:
        message = f"This tenant has its share ({share}) of the queue in flight; retry shortly."
    return ApiError(429, message, type="rate_limit_error", code="queue_full")


def body_too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than this server accepts ({limit} bytes).",
        code="request_too_large",
    )


def unsupported(feature: str, engine: str) -> ApiError:
    return bad_request(f"'{feature}' is not supported by the {engine} engine", param=feature)
