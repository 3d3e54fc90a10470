"""HTTP errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json


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
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

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


def queue_full() -> ApiError:
    return ApiError(
        429,
        "The server is at capacity (request queue full); retry shortly.",
        type="rate_limit_error",
        code="queue_full",
    )


def unsupported(feature: str, engine: str) -> ApiError:
    return bad_request(f"'{feature}' is not supported by the {engine} engine", param=feature)
