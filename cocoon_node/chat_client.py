"""A minimal OpenAI-API client used by ``cocoon-node chat`` and the main job (same path as any client).

Every failure is one line on stderr that says what to do about it.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import httpx


class ChatError(Exception):
    """A failure to report as one line."""


def _unreachable(api: str, exc: Exception) -> str:
    return (f"requester API {api} unreachable ({exc or type(exc).__name__}): is a requester running "
            f"(`cocoon-node run --requester` or `cocoon-node cluster`)? pass its address with --api")


def _explain(api: str, status: int, data: Any, model: str = "") -> str:
    message = ""
    if isinstance(data, dict):
        err = data.get("error")
        message = str(err.get("message", "")) if isinstance(err, dict) else str(err or "")
    if status == 401:
        return f"{api} wants an API key: pass --api-key (or set COCOON_REQUESTER_API_KEY)"
    if status in (404, 503) and model:  # 404: no worker offers the model; 503: none of its workers is usable
        return f"error {status}: {message}: see the models on offer with `curl {api}/v1/models`, pick one with " \
               f"--model (or leave --model out to use the one on offer)"
    return f"error {status}: {message or 'no message'}"


def offered_model(api: str, *, api_key: str = "", timeout: float = 30.0) -> str:
    """The model to ask for when none is given: the first with verified workers, else the first on offer."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(api.rstrip("/") + "/v1/models", headers=headers, timeout=timeout)
        data = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ChatError(_unreachable(api, exc)) from None
    if resp.status_code != 200:
        raise ChatError(_explain(api, resp.status_code, data))
    models = [m for m in data.get("data", []) if isinstance(m, dict) and m.get("id")]
    if not models:
        raise ChatError(f"{api} offers no model yet: wait until workers have joined (`cocoon-node status` "
                        f"lists them), or pass --model")
    verified = [m for m in models if (m.get("cocoon") or {}).get("verified_workers")]
    return str((verified or models)[0]["id"])


def chat_once(api: str, prompt: str, *, model: str, max_tokens: int, api_key: str = "", stream: bool = True,
              out: TextIO = sys.stdout, timeout: float = 300.0) -> int:
    """Send one chat request; print the answer as it streams. Returns a process exit code."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    url = api.rstrip("/") + "/v1/chat/completions"
    try:
        if not stream:
            resp = httpx.post(url, json=body, headers=headers, timeout=timeout)
            data = resp.json()
            if resp.status_code != 200:
                print(f"cocoon-node: {_explain(api, resp.status_code, data, model)}", file=sys.stderr)
                return 1
            out.write(data["choices"][0]["message"]["content"] + "\n")
            out.write(f"[usage: {json.dumps(data['usage'])}]\n")
            return 0
        with httpx.stream("POST", url, json=body, headers=headers, timeout=timeout) as resp:
            if resp.status_code != 200:
                resp.read()
                try:
                    data = resp.json()
                except ValueError:
                    data = {"error": resp.text[:200]}
                print(f"cocoon-node: {_explain(api, resp.status_code, data, model)}", file=sys.stderr)
                return 1
            worker = resp.headers.get("x-cocoon-worker", "?")
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line.removeprefix("data: ")
                if payload == "[DONE]":
                    break
                event = json.loads(payload)
                if "error" in event:
                    print(f"\ncocoon-node: the answer broke off: {event['error']['message']} (ask again: another "
                          f"worker may take it)", file=sys.stderr)
                    return 1
                if event.get("usage"):
                    out.write(f"\n[worker {worker[:16]}… usage: {json.dumps(event['usage'])}]\n")
                for choice in event.get("choices", []):
                    out.write(choice["delta"].get("content", ""))
                out.flush()
        return 0
    except httpx.HTTPError as exc:
        print(f"cocoon-node: {_unreachable(api, exc)}", file=sys.stderr)
        return 1
