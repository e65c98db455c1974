"""A minimal OpenAI-API client used by ``cocoon-node chat`` and the main job (same path as any client)."""

from __future__ import annotations

import json
import sys
from typing import TextIO

import httpx


def chat_once(api: str, prompt: str, *, model: str, max_tokens: int, api_key: str = "", stream: bool = True,
              out: TextIO = sys.stdout, timeout: float = 300.0) -> int:
    """Send one chat request; print the answer as it streams. Returns a process exit code."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    url = api.rstrip("/") + "/v1/chat/completions"
    try:
        if not stream:
            resp = httpx.post(url, json=body, headers=headers, timeout=timeout)
            data = resp.json()
            if resp.status_code != 200:
                print(f"error {resp.status_code}: {data.get('error', {}).get('message')}", file=sys.stderr)
                return 1
            out.write(data["choices"][0]["message"]["content"] + "\n")
            out.write(f"[usage: {json.dumps(data['usage'])}]\n")
            return 0
        with httpx.stream("POST", url, json=body, headers=headers, timeout=timeout) as resp:
            if resp.status_code != 200:
                resp.read()
                print(f"error {resp.status_code}: {resp.json().get('error', {}).get('message')}", file=sys.stderr)
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
                    print(f"\nerror: {event['error']['message']}", file=sys.stderr)
                    return 1
                if event.get("usage"):
                    out.write(f"\n[worker {worker[:16]}… usage: {json.dumps(event['usage'])}]\n")
                for choice in event.get("choices", []):
                    out.write(choice["delta"].get("content", ""))
                out.flush()
        return 0
    except httpx.HTTPError as exc:
        print(f"cocoon-node: requester API {api} unreachable: {exc}", file=sys.stderr)
        return 1
