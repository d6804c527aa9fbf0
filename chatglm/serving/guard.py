"""RequestGuard: the checks every request passes before a route sees it, on the raw request.

The API key, the content type (JSON only, so a browser's form-like "simple request" from another site is
refused), the body's size and arrival time, and the JSON itself (nesting depth, over-long integers, lone
UTF-16 surrogates). Only then does FastAPI parse the body into the pydantic models of ``protocol``. The
guard also writes the one log line of each request, from what the route left in ``request.state.log``.
"""

import asyncio
import datetime
import hmac
import json
import logging
import time

from starlette.datastructures import Headers

from ..entrypoints.text import is_valid_text
from .errors import ApiError, body_example, error_response, safe_text
from .settings import ServerSettings

logger = logging.getLogger(__name__)

LONGEST_INTEGER = 64  # digits; longer integer literals are read as +-10**64 (always out of range, never parsed)
JSON_ROUTES = ("/", "/v1/chat/completions")  # the routes that take a body; other methods get their 405
# a client that sent a body we refuse may still be sending the rest: answer, then close, rather than read it
CLOSE = {"Connection": "close"}


def now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def check_json(value, max_depth: int):
    """Raise ApiError (naming where) for nesting deeper than ``max_depth`` or a lone UTF-16 surrogate."""
    stack = [(value, "", 1)]
    while stack:  # iterative: the depth is what is being checked
        item, path, depth = stack.pop()
        if isinstance(item, str) and not is_valid_text(item):
            raise ApiError(400, f"'{path or 'body'}' holds a lone UTF-16 surrogate (like \\ud800), which is not "
                                f"text: send valid Unicode", path or None)
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise ApiError(400, f"the JSON body is nested more than {max_depth} levels deep (at '{path}')")
            for key, child in (item.items() if isinstance(item, dict) else enumerate(item)):
                if isinstance(key, str) and not is_valid_text(key):
                    raise ApiError(400, f"a key in '{path or 'body'}' holds a lone UTF-16 surrogate: send valid "
                                        f"Unicode", path or None)
                child_path = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
                stack.append((child, child_path, depth + 1))


def parse_json(body: bytes, path: str, max_depth: int) -> bytes:
    """Check ``body`` as JSON; return it as the app will read it (over-long integers shortened)."""
    shortened = []  # integer literals too long to convert (Python refuses beyond 4300 digits anyway)

    def parse_int(digits: str):
        if len(digits) <= LONGEST_INTEGER:
            return int(digits)
        shortened.append(digits)
        return -(10 ** LONGEST_INTEGER) if digits.startswith("-") else 10 ** LONGEST_INTEGER

    try:
        value = json.loads(body, parse_int=parse_int)
    except RecursionError:
        raise ApiError(400, f"the JSON body is nested too deeply (at most {max_depth} levels)") from None
    except ValueError as exc:  # also bad UTF-8
        raise ApiError(400, f"the request body is not valid JSON ({safe_text(exc, 120)}); send for example "
                            f"{body_example(path)}") from None
    check_json(value, max_depth)
    return json.dumps(value).encode() if shortened else body


class RequestGuard:
    """ASGI middleware: API key, content type, body size, body time and JSON checks before anything else."""

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [None]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            self._check_key(scope)
            if scope["method"] == "POST" and scope["path"] in JSON_ROUTES:
                receive = await self._read_json(scope, receive)
        except ApiError as exc:
            scope.setdefault("state", {})["log"] = exc.message
            response = error_response(scope["path"], exc.status, exc.message, exc.param, exc.headers)
            await response(scope, receive, send_and_note)
        else:
            await self.app(scope, receive, send_and_note)
        finally:
            if scope["path"] != "/health":
                client = scope.get("client") or ("-",)
                note = safe_text(scope.get("state", {}).get("log", ""), 100000)
                logger.info("[%s] %s %s %s %s %.2fs %s", now(), client[0], scope["method"], scope["path"],
                            status[0] or "-", time.perf_counter() - started, note)

    def _check_key(self, scope):
        key = self.settings.api_key
        if not key or scope["path"] == "/health":
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
                                "key the server was started with (--api-key or CHATGLM_API_KEY)",
                           headers={"WWW-Authenticate": "Bearer"})

    async def _read_json(self, scope, receive):
        """Read and check the whole body; return a ``receive`` that hands it to the app."""
        headers, limit = Headers(scope=scope), self.settings.max_body_bytes
        content_type = headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, f"send the body as JSON with the header 'Content-Type: application/json' "
                                f"(got {safe_text(content_type, 80) or 'none'})", headers=CLOSE)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body is {declared} bytes; this server takes at most {limit} "
                                f"(--max-body-bytes): send a shorter history", headers=CLOSE)
        try:
            body = await asyncio.wait_for(self._read_body(receive, limit), self.settings.request_timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {self.settings.request_timeout:g} s "
                                f"(--request-timeout)", headers=CLOSE) from None
        body = await asyncio.to_thread(parse_json, body, scope["path"], self.settings.max_json_depth)
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # later calls report the client's disconnect
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    @staticmethod
    async def _read_body(receive, limit: int) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "the client went away before sending the whole body")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                raise ApiError(413, f"the request body is over {limit} bytes (--max-body-bytes): send a shorter "
                                    f"history", headers=CLOSE)
            if not message.get("more_body", False):
                return b"".join(chunks)
