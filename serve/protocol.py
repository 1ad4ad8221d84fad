"""OpenAI wire models the gateway reads, and errors in OpenAI's `{"error": {...}}` shape.

Request models accept unknown fields (clients send new ones; vLLM gets the body as sent, with only
`model` rewritten to the served name).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    user: str | None = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    prompt: str | list[Any]
    stream: bool = False
    user: str | None = None


class ApiError(Exception):
    """An error the gateway answers with; `code` is OpenAI's machine-readable code."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def invalid_body(exc: ValidationError) -> ApiError:
    """400 naming the first bad field."""
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    return ApiError(400, f"invalid request body: {param or 'body'}: {err['msg']}", param=param,
                    code="invalid_request")


def unauthorized(message: str = "missing or invalid API key") -> ApiError:
    return ApiError(401, message, type_="authentication_error", code="invalid_api_key")


def forbidden(model: str) -> ApiError:
    return ApiError(403, f"this API key may not use model {model!r}", type_="permission_error",
                    code="model_not_allowed", param="model")


def model_not_found(model: str, detail: str) -> ApiError:
    return ApiError(404, f"model {model!r} not found: {detail}", code="model_not_found", param="model")


def upstream_unavailable(message: str, status: int = 503) -> ApiError:
    return ApiError(status, message, type_="server_error", code="upstream_unavailable",
                    retry_after=2 if status == 503 else None)
