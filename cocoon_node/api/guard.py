"""What the API checks before a request body becomes a chat request: credentials, size, JSON shape.

Each answer is OpenAI's error shape with a 4xx: a client's bad input must never reach a worker (where it
would count against the worker) nor escape as a bare 500.

- Credentials are compared in constant time (:func:`bearer_ok`), so response timing cannot reveal how much
  of a guessed key was right.
- The body is read up to a limit; JSON is parsed with a nesting bound (``json`` recurses in C and would
  raise ``RecursionError`` on 100,000 nested arrays) and every string and key must be encodable as UTF-8:
  JSON allows a lone surrogate escape (``"\\ud800"``), which no frame of ours can carry.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

MAX_BODY_BYTES = 1 << 20
MAX_JSON_DEPTH = 64  # a chat request's own nesting is shallow; free-form values are bounded further later


def error_response(status: int, message: str, *, type_: str, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status)


def invalid(message: str, *, param: str | None = None, code: str | None = "invalid_value",
            status: int = 400) -> JSONResponse:
    return error_response(status, message, type_="invalid_request_error", param=param, code=code)


def bearer_ok(header: str | None, secret: str) -> bool:
    """``header`` is ``Bearer <secret>``, compared in constant time (for equal lengths; the length of the
    expected value is no secret worth hiding)."""
    expected = b"Bearer " + secret.encode("utf-8")
    # Starlette decodes header bytes as latin-1, so this gives back exactly the bytes the client sent.
    given = (header or "").encode("latin-1", "replace")
    return hmac.compare_digest(given, expected)


class BadBody(Exception):
    """The body cannot become a request; ``response`` says why, in OpenAI's shape."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.body)
        self.response = response


async def read_body(request: Request, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The body, refusing more than ``max_bytes`` (declared or sent) with a 413."""
    too_large = invalid(f"request body over {max_bytes} bytes", code="request_too_large", status=413)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BadBody(too_large)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > max_bytes:
            raise BadBody(too_large)
    return bytes(body)


def parse_json(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The body's JSON value: nested at most ``max_depth`` deep, every string and key valid UTF-8."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise BadBody(invalid(f"JSON nested deeper than {max_depth} levels", code="invalid_json")) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadBody(invalid(f"body is not valid JSON: {exc}", code="invalid_json")) from None
    problem = _first_problem(value, max_depth)
    if problem is not None:
        path, message = problem
        raise BadBody(invalid(f"{path}: {message}" if path else message, param=path or None,
                              code="invalid_json" if "nested" in message else "invalid_value"))
    return value


def _first_problem(value: Any, max_depth: int) -> tuple[str, str] | None:
    """(path, message) of the first value nested too deep or holding a string UTF-8 cannot encode."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return path, "contains a lone surrogate (invalid Unicode); it cannot be sent"
        elif isinstance(item, dict | list):
            if depth > max_depth:
                return path, f"JSON nested deeper than {max_depth} levels"
            if isinstance(item, dict):
                for key, sub in item.items():
                    where = f"{path}.{key}" if path else str(key)
                    if not _encodable(key):
                        return path, "a key contains a lone surrogate (invalid Unicode)"
                    stack.append((sub, where, depth + 1))
            else:
                stack.extend((sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(item))
    return None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
