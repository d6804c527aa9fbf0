"""Errors of the HTTP API and their shapes: ``{"detail": ..., "status": ...}`` on ``POST /`` (the original
contract) and OpenAI's ``{"error": {...}}`` under ``/v1/``, with the exception handlers that write them."""

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .protocol import FIELD_NAMES

logger = logging.getLogger(__name__)

BODY_EXAMPLES = {"/": '{"prompt": "你好", "history": []}',
                 "/v1/": '{"messages": [{"role": "user", "content": "你好"}]}'}
# the statuses every JSON route may answer besides 200, as /openapi.json documents them
ERROR_DOCS = {status: {"description": what} for status, what in (
    (400, "bad input"), (401, "missing or wrong API key"), (408, "the body came too slowly"),
    (413, "body or prompt too large"), (415, "not JSON"), (422, "bad field (POST /)"),
    (500, "this request failed"), (503, "queue full, or the server is shutting down"))}


class ApiError(Exception):
    """A request that cannot be answered as sent: the HTTP status, a message saying what to do, the field at
    fault (``param``) and extra response headers."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


def safe_text(text: str, limit: int = 300) -> str:
    """``text`` made printable as UTF-8 (lone surrogates become '?') and cut to ``limit`` characters."""
    text = str(text).encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


def body_example(path: str) -> str:
    return BODY_EXAMPLES["/v1/" if path.startswith("/v1/") else "/"]


def error_response(path: str, status: int, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    message = safe_text(message, 1000)
    if path.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "param": param and safe_text(param), "code": status}}
    else:
        body = {"detail": message, "status": status}
    return JSONResponse(body, status_code=status, headers=headers)


def describe_validation_error(exc: RequestValidationError, path: str, field_names) -> tuple[str, str | None]:
    """One message naming each field at fault (pydantic's union tags left out: ``field_names`` are the real
    fields), and the first field."""
    messages, fields = [], []
    for error in exc.errors():
        loc = list(error["loc"])[1:]  # drop "body"
        field = ""
        for i, part in enumerate(loc):
            if isinstance(part, int):
                field += f"[{part}]"
            elif part in field_names or (error["type"] == "extra_forbidden" and i == len(loc) - 1):
                field += ("." if field else "") + safe_text(part, 60)
        if field in fields:  # the other members of a union
            continue
        fields.append(field)
        if not field:
            messages.append(f"the request body must be a JSON object like {body_example(path)}")
        elif error["type"] == "extra_forbidden":
            messages.append(f"'{field}' is not an option of this API; leave it out")
        else:
            messages.append(f"'{field}': {error['msg']}")
    return "; ".join(messages[:3]), (fields[0] or None) if fields else None


# --- exception handlers (create_app registers them) ----------------------------------------------------


async def api_error(request: Request, exc: ApiError):
    request.state.log = exc.message
    return error_response(request.url.path, exc.status, exc.message, exc.param, exc.headers)


async def invalid_request(request: Request, exc: RequestValidationError):
    message, param = describe_validation_error(exc, request.url.path, FIELD_NAMES)
    request.state.log = message
    return error_response(request.url.path, 400 if request.url.path.startswith("/v1/") else 422, message, param)


async def http_error(request: Request, exc: StarletteHTTPException):
    return error_response(request.url.path, exc.status_code, str(exc.detail), headers=exc.headers)


async def internal_error(request: Request, exc: Exception):
    logger.error("internal error on %s", request.url.path, exc_info=exc)
    return error_response(request.url.path, 500, "internal server error (the server log has the details)")


HANDLERS = {ApiError: api_error, RequestValidationError: invalid_request, StarletteHTTPException: http_error,
            Exception: internal_error}
