"""``POST /v1/completions`` (OpenAI's legacy text completions) and ``GET /v1/models/{id}`` (issue 13).

The mesh's inference stream carries chat requests, so a text completion travels as one: its prompt is the
content of a single user message (the worker's chat template applies; this is not raw-text continuation).
Everything after that is the chat path's own (admission queue, selection, attestation, metering, vouchers,
errors): the answer is the chat answer reshaped into OpenAI's ``text_completion`` object, ``choices[].text``.
A list of prompts is one request per prompt (each metered and paid on its own), answered as one choice per
prompt in order; streamed, one prompt per request.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from cocoon_node.api.guard import error_response, invalid

#: Fields of a completions request that mean the same on a chat request (passed through and validated there).
_SHARED = frozenset({"model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options",
                     "n", "user"})
#: Completions fields we cannot honour: refused by name rather than silently ignored.
_UNSUPPORTED = {"echo": False, "suffix": None, "logprobs": None, "best_of": 1, "logit_bias": None,
                "presence_penalty": 0, "frequency_penalty": 0}
_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_PROMPTS = 16


class NotACompletion(Exception):
    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.body)
        self.response = response


def chat_payloads(body: Any) -> list[dict[str, Any]]:
    """One chat request body per prompt; raises :class:`NotACompletion` naming the offending field."""
    if not isinstance(body, dict):
        raise NotACompletion(invalid("the body must be a JSON object"))
    for name, harmless in _UNSUPPORTED.items():
        if name in body and body[name] not in (harmless, None):
            raise NotACompletion(invalid(f"{name}: not supported by this endpoint", param=name,
                                         code="unsupported_parameter"))
    unknown = sorted(set(body) - _SHARED - set(_UNSUPPORTED) - {"prompt"})
    if unknown:
        raise NotACompletion(invalid(f"{unknown[0]}: unknown field", param=unknown[0]))
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise NotACompletion(invalid("prompt: a string or a non-empty list of strings (token arrays are not "
                                     "supported)", param="prompt"))
    if len(prompts) > MAX_PROMPTS:
        raise NotACompletion(invalid(f"prompt: at most {MAX_PROMPTS} prompts per request", param="prompt"))
    if body.get("stream") and len(prompts) > 1:
        raise NotACompletion(invalid("prompt: a streamed completion takes one prompt", param="prompt",
                                     code="unsupported_parameter"))
    shared = {k: v for k, v in body.items() if k in _SHARED}
    shared.setdefault("max_tokens", _DEFAULT_MAX_TOKENS)
    return [{**shared, "messages": [{"role": "user", "content": p}]} for p in prompts]


def text_choice(chat_choice: dict[str, Any], index: int) -> dict[str, Any]:
    message = chat_choice.get("message") or {}
    return {"index": index, "text": message.get("content") or "", "logprobs": None,
            "finish_reason": chat_choice.get("finish_reason")}


def _completion_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


async def complete_all(answers: list[Callable[[], Awaitable[Response]]]) -> Response:
    """Run each prompt's chat request side by side; one text_completion, or the first failure as it was."""
    results: list[Response | None] = [None] * len(answers)

    async def one(i: int) -> None:
        results[i] = await answers[i]()

    async with trio.open_nursery() as nursery:
        for i in range(len(answers)):
            nursery.start_soon(one, i)
    done = [r for r in results if r is not None]
    failed = next((r for r in done if r.status_code != 200), None)
    if failed is not None:
        return failed
    bodies = [json.loads(bytes(r.body)) for r in done]
    usage: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                             "cost_nanotons": {"prompt": 0, "completion": 0, "total": 0}}
    for b in bodies:
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            usage[key] += b["usage"][key]
        for key in ("prompt", "completion", "total"):
            usage["cost_nanotons"][key] += b["usage"]["cost_nanotons"][key]
    first = bodies[0]
    headers = {k: v for k, v in done[0].headers.items() if k.startswith("x-cocoon-")}
    return JSONResponse({"id": _completion_id(), "object": "text_completion", "created": first["created"],
                         "model": first["model"], "system_fingerprint": first["system_fingerprint"],
                         "choices": [text_choice(b["choices"][0], i) for i, b in enumerate(bodies)],
                         "usage": usage,
                         # each prompt's receipt (issue 16), stored under its chat completion id
                         "cocoon": {"choices": [{"completion_id": b["id"], **(b.get("cocoon") or {})}
                                                for b in bodies]}}, headers=headers)


class TextStream(Response):
    """The chat stream's ASGI response with each SSE event reshaped into a ``text_completion`` chunk (error
    events and ``[DONE]`` pass as they are), so streaming keeps the chat path's disconnect and close handling."""

    def __init__(self, chat_stream: Response) -> None:
        super().__init__(content=None)
        self._inner = chat_stream
        self._id = _completion_id()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = False

        async def reshape(message: Message) -> None:
            nonlocal streaming
            if message["type"] == "http.response.start":
                streaming = dict(message.get("headers") or []).get(b"content-type", b"").startswith(
                    b"text/event-stream")
            elif message["type"] == "http.response.body" and streaming and message.get("body"):
                message = {**message, "body": b"".join(self._event(e) for e in message["body"].split(b"\n\n") if e)}
            await send(message)

        await self._inner(scope, receive, reshape)

    def _event(self, event: bytes) -> bytes:
        data = event[len(b"data: "):] if event.startswith(b"data: ") else event
        if data == b"[DONE]":
            return event + b"\n\n"
        obj = json.loads(data)
        if "choices" not in obj:  # an error event
            return event + b"\n\n"
        out = {"id": self._id, "object": "text_completion", "created": obj["created"], "model": obj["model"],
               "system_fingerprint": obj.get("system_fingerprint"),
               "choices": [{"index": c["index"], "text": (c.get("delta") or {}).get("content") or "",
                            "logprobs": None, "finish_reason": c.get("finish_reason")} for c in obj["choices"]]}
        if "cocoon" in obj:  # the final chunk's receipt (issue 16), stored under the chat completion id
            out["cocoon"] = {"completion_id": obj["id"], **obj["cocoon"]}
        if "usage" in obj:
            out["usage"] = obj["usage"]
        return b"data: " + json.dumps(out).encode() + b"\n\n"


def model_entry(models: list[dict[str, Any]], model_id: str) -> JSONResponse:
    """``GET /v1/models/{id}``: the entry ``/v1/models`` lists, or OpenAI's 404 ``model_not_found``."""
    for entry in models:
        if entry.get("id") == model_id:
            return JSONResponse(entry)
    return error_response(404, f"the model {model_id!r} does not exist: no worker offers it",
                          type_="invalid_request_error", param="model", code="model_not_found")


def path_model(request: Request) -> str:
    """The model id from the path; ids with a slash (``org/name``) arrive whole through the ``path`` converter."""
    return str(request.path_params["model"])
