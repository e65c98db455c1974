"""Regenerate the golden vectors of the envelope, announcement, inference, channel and dial-back protocols.

Run ``python -m tests.wire.make_vectors``. Keys are fixed seeds and Ed25519 signatures are deterministic,
so the output is byte-for-byte reproducible; the tests check both decoding and re-encoding against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from msgspec.structs import replace  # announcements are msgspec Structs

from cocoon_node.mesh import Announcement
from cocoon_node.mesh.announce import Hardware
from cocoon_node.wire import canonical_dumps, encode_frame

VECTOR_DIR = Path(__file__).resolve().parents[2] / "protocols" / "vectors"
SEED = bytes(range(32))


def to_json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json_value(v) for v in value]
    return value


def from_json_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return bytes.fromhex(value["$bytes"])
        return {k: from_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    return value


def sample_announcement() -> tuple[Announcement, Any]:
    key_pair = create_new_key_pair(SEED)
    peer = ID.from_pubkey(key_pair.public_key)
    ann = Announcement(
        peer_id=peer.to_bytes(), addrs=(f"/ip4/127.0.0.1/tcp/4001/p2p/{peer.to_base58()}",),
        model="SmolLM2-135M-Instruct", model_hash=bytes.fromhex("ab" * 32), backend="torch", synthetic=False,
        price_prompt=1000, price_completion=2000, max_concurrent=2, load=1, protocols=("/cocoon/inference/1.0.0",),
        tee_kind="dev-INSECURE", seqno=42, issued_at=1_790_000_000, expires_at=1_790_000_015,
        payout="0:" + "22" * 32, v=1,
    )
    return ann, key_pair


def frames() -> list[dict[str, Any]]:
    chat = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}], "stream": True,
            "max_completion_tokens": 16, "stream_options": {"include_usage": True}}
    return [
        {"t": "request", "v": 1, "id": "r1", "chat": chat, "price_prompt": 1000, "price_completion": 2000},
        {"t": "request", "v": 1, "id": "r2", "chat": chat, "price_prompt": 1000, "price_completion": 2000,
         "payment": {"channel": "0:" + "11" * 32, "channel_id": bytes(range(32))}},
        {"t": "accept", "id": "r1", "prompt_tokens": 31, "credit_window": 200000},
        {"t": "accept", "id": "r2", "prompt_tokens": 31, "credit_window": 200000, "keep_open": True},
        {"t": "reject", "id": "r1", "code": "invalid_request", "field": "temperature", "message": "must be <= 2"},
        {"t": "delta", "id": "r1", "text": "Hello", "tokens": 1},
        # the optional extras of a request that asked for tools / logprobs
        {"t": "delta", "id": "r1", "text": "", "tokens": 3,
         "tool_calls": [{"index": 0, "id": "call_1", "name": "get_weather", "arguments": '{"city":'},
                        {"index": 1, "arguments": '"Oslo"}'}]},
        {"t": "delta", "id": "r1", "text": "Hi", "tokens": 1,
         "logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": b"Hi",
                       "top": [{"token": "Hi", "logprob": -0.25, "bytes": b"Hi"},
                               {"token": "Hello", "logprob": -1.5}]}]},
        {"t": "usage", "id": "r1", "prompt_tokens": 31, "completion_tokens": 5},
        {"t": "final", "id": "r1", "finish_reason": "stop", "prompt_tokens": 31, "completion_tokens": 5,
         "total_tokens": 36, "ttft_ms": 12.5, "generation_ms": 200.0, "tokens_per_second": 25.0},
        {"t": "final", "id": "r1", "finish_reason": "tool_calls", "prompt_tokens": 31, "completion_tokens": 3,
         "total_tokens": 34, "ttft_ms": 12.5, "generation_ms": 90.0, "tokens_per_second": 33.0},
        {"t": "error", "id": "r1", "code": "backend", "message": "model crashed"},
        {"t": "cancel", "id": "r1"},
        {"t": "voucher", "id": "r1", "voucher": b"\x01\x02\x03"},
        # issue 16: a receipt asked for after `final`, with the voucher that paid it, and the signed answer
        {"t": "receipt_request", "id": "r1", "voucher": b"\x01\x02\x03"},
        {"t": "receipt", "id": "r1", "receipt": b"\xa2" + bytes(8)},
    ]


def vector_name(frame: dict[str, Any]) -> str:
    return (frame["t"] + ("-with-payment" if "payment" in frame else "")
            + ("-keep-open" if "keep_open" in frame else "")
            + ("-tool-calls" if "tool_calls" in frame or frame.get("finish_reason") == "tool_calls" else "")
            + ("-logprobs" if "logprobs" in frame else ""))


def channel_frames() -> list[dict[str, Any]]:
    return [
        {"t": "close_request", "channel": "EQ" + "A" * 46, "channel_id": bytes(range(32)), "cumulative": 123_456,
         "payer_sig": bytes(range(64))},
        {"t": "close_reply", "payee_sig": bytes(64)},
        {"t": "close_refused", "reason": "close terms 1 below our newest voucher 5"},
    ]


def dialback_frames() -> list[dict[str, Any]]:
    peer = "12D3KooWHFrmLWTTDD4NodngtRMEVYgxrsDbhjqH3eqWqtfh6Gp6"
    nonce = bytes(range(16))
    return [
        {"t": "dial_request", "v": 1, "nonce": nonce,
         "addrs": ["/ip4/10.1.0.2/tcp/4001", f"/ip4/198.18.1.1/tcp/4001/p2p/{peer}"]},
        {"t": "dial_response", "observed": "/ip4/198.18.1.1/tcp/53412",
         "results": [{"addr": "/ip4/10.1.0.2/tcp/4001", "status": "refused",
                      "reason": "not the address the request came from"},
                     {"addr": f"/ip4/198.18.1.1/tcp/4001/p2p/{peer}", "status": "dial_error", "reason": "timed out"}]},
        {"t": "dial_back", "nonce": nonce, "addr": "/ip4/198.18.3.1/tcp/4001"},
        {"t": "dial_back_ok"},
    ]


def attest_frames() -> list[dict[str, Any]]:
    return [
        {"t": "attest_request", "v": 1, "nonce": bytes(range(32))},
        {"t": "attest_response", "report": b"\x82" + bytes(8), "evidence": b"\xa5" + bytes(8)},
        {"t": "attest_error", "code": "busy", "message": "2 fresh attestations in flight"},
    ]


def build() -> dict[str, list[dict[str, Any]]]:
    ann, key_pair = sample_announcement()
    sealed = ann.seal(key_pair.private_key)
    import cbor2

    # Payload version 2 carries a tokenizer (issue 19), the hardware it runs on (issue 15), or both.
    tokenizer = bytes.fromhex("9ebd23ced59c16a4fdd027e7799e067e4395ac26f29f10ac0d4d4bd0fccc84ca")
    hardware = Hardware(accelerator="NVIDIA H200", accelerator_count=8, accelerator_memory_mib=143_771,
                        hardware_source="detected", context_length=32_768, context_source="declared")
    announcements = [
        ("announcement-payload", ann),
        # a worker that names its tokenizer (requesters holding it count claimed tokens themselves)
        ("announcement-payload-v2-tokenizer", replace(ann, v=2, tokenizer=tokenizer)),
        ("announcement-payload-v2-hardware", replace(ann, v=2, hardware=hardware)),
        ("announcement-payload-v2-tokenizer-hardware", replace(ann, v=2, tokenizer=tokenizer, hardware=hardware)),
        # v3: the optional OpenAI features its backend serves (requesters route by them)
        ("announcement-payload-v3-capabilities", replace(ann, v=3, tokenizer=tokenizer,
                                                         capabilities=("logprobs", "seed"))),
    ]
    return {
        "announce/announcement.json": [{"name": name, "hex": canonical_dumps(a.to_wire()).hex(),
                                        "value": to_json_value(a.to_wire())} for name, a in announcements],
        "envelope/envelope.json": [{"name": "announcement-envelope", "hex": sealed.hex(),
                                    "value": to_json_value(cbor2.loads(sealed))}],
        "inference/frames.json": [{"name": vector_name(f),
                                   "hex": encode_frame("inference", f).hex(), "value": to_json_value(f)}
                                  for f in frames()],
        "channel/frames.json": [{"name": f["t"], "hex": encode_frame("channel", f).hex(), "value": to_json_value(f)}
                                for f in channel_frames()],
        "dialback/frames.json": [{"name": f["t"], "hex": encode_frame("dialback", f).hex(), "value": to_json_value(f)}
                                 for f in dialback_frames()],
        "attest/frames.json": [{"name": f["t"], "hex": encode_frame("attest", f).hex(), "value": to_json_value(f)}
                               for f in attest_frames()],
    }


def main() -> None:
    for rel, vectors in build().items():
        path = VECTOR_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(vectors, indent=2) + "\n", encoding="utf-8")
        print("wrote", path)


if __name__ == "__main__":
    main()
