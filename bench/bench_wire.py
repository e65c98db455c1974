"""Wire benchmark: inference delta frames over one Noise-encrypted yamux stream between two in-process hosts.

Measures (1) frame encode and decode rates in-process (the typed frames' ``FrameCodec``: msgpack with
validation in msgspec; on a tree before the typed frames, dicts + ``wire.schema``), (2) frames/s and
MB/s through a real libp2p stream on loopback, one ``write`` per frame as the worker does, the receiver
parsing with ``FrameStream`` like the requester (text sizes: a one-token delta (~6 chars) and a 1 KiB one),
and (3) encode/decode rates of the canonical-CBOR records (attestation report record, its envelope, dev
evidence, the domain envelope of announcements, the announcement payload): bytes <-> validated fields, no
signature work, plus the signed paths (sign + seal, open + verify) for context.

Prints one JSON line, then one human line per case.
    .venv/bin/python bench/bench_wire.py [--frames 20000] [--seconds 2] [--skip-stream]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node import attestation as att
from cocoon_node.attestation import report as att_report
from cocoon_node.inference.stream import MAX_FRAME
from cocoon_node.mesh import Mesh, MeshSettings
from cocoon_node.wire import FrameStream, canonical_dumps, open_envelope, seal_envelope

PROTOCOL = "/cocoon-bench/wire/1.0.0"
REQUEST_ID = "req-0123456789abcdef"


def frame_codec() -> tuple[Callable[[str], Any], Callable[[Any], bytes], Callable[[bytes], Any], Any]:
    """(make a delta, encode it, decode a body, a FrameStream's codec argument) as this checkout does it."""
    try:
        from cocoon_node.wire.messages.inference import CODEC, DeltaFrame
    except ImportError:  # before the typed frames: dicts checked by wire.schema
        from cocoon_node.wire import decode_frame, encode_frame

        return (lambda text: {"t": "delta", "id": REQUEST_ID, "text": text, "tokens": 1},
                lambda frame: encode_frame("inference", frame, max_frame=MAX_FRAME),
                lambda body: decode_frame("inference", body), "inference")
    return (lambda text: DeltaFrame(id=REQUEST_ID, text=text, tokens=1), CODEC.encode, CODEC.decode, CODEC)


MAKE, ENCODE, DECODE, STREAM_CODEC = frame_codec()


def codec_rates(text: str, seconds: float) -> dict[str, float]:
    frame = MAKE(text)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            ENCODE(frame)
        n += 1000
    enc = n / (time.perf_counter() - t0)
    body = ENCODE(frame)[4:]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            DECODE(body)
        n += 1000
    dec = n / (time.perf_counter() - t0)
    return {"encode_per_s": round(enc), "decode_per_s": round(dec), "frame_bytes": len(body) + 4}


def _rate(fn: Callable[[], object], seconds: float, rounds: int = 5) -> float:
    """Calls per second in the best of ``rounds`` rounds (timeit's rule: on a shared machine the fastest
    round is the one least disturbed by other processes)."""
    fn()
    best = 0.0
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / rounds:
            for _ in range(100):
                fn()
            n += 100
        best = max(best, n / (time.perf_counter() - t0))
    return best


def _record_samples() -> dict[str, Any]:
    """One of each record, built as a node builds them (fixed keys, dev evidence, a real TDX quote)."""
    node = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench-wire-node").digest())
    dev = att.DevPlatform(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench-wire-dev").digest()))
    claims = att.Claims.for_key(node.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
                                model_name="Qwen/Qwen3-8B", model_hash=bytes(32), node_version="0.1.0",
                                issued_at=1_800_000_000, expires_at=1_800_003_600, tee_kind=att.TEE_DEV,
                                backend="torch")
    evidence = dev.evidence(claims.report_data(), att.dev_image_hash("0.1.0"))
    quote = (Path(__file__).resolve().parents[1] / "tests" / "data" / "tdx-quote-v4.dat").read_bytes()
    envelope = att.sign_report(claims, evidence, node)
    libp2p_key = create_new_key_pair(hashlib.sha256(b"bench-wire-announcer").digest())
    announce = seal_envelope("cocoon/announce/v1", bytes(300), libp2p_key.private_key)
    return {"node": node, "claims": claims, "evidence": evidence, "quote": quote, "envelope": envelope,
            "payload": att_report.encode_record(claims, evidence), "libp2p_key": libp2p_key,
            "announce": announce}


def _record_codecs(r: dict[str, Any]) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """(encode, decode) per record: bytes <-> validated fields, as the code of this checkout does it."""
    import cbor2

    env = cbor2.loads(r["envelope"])
    ann = cbor2.loads(r["announce"])
    tdx_payload = att_report.encode_record(r["claims"], r["quote"])
    try:
        from cocoon_node.wire import decode_cbor, decode_prefixed, encode_cbor
        from cocoon_node.wire.messages.attestation import AttestationEnvelope, DevEvidenceRecord
        from cocoon_node.wire.messages.envelope import SignedEnvelope
    except ImportError:  # before the typed messages (commit efe7e1b): dicts + hand-written checks
        from cocoon_node.attestation import dev as att_dev
        from cocoon_node.wire import canonical_loads, validate

        # private-name-ok: the commit before typed messages had no public name for these field tables
        rep, dev_fields, cc = att_report, att_dev._FIELDS, att_report.canonical_cbor  # type: ignore[attr-defined]
        dev_map = cbor2.loads(r["evidence"])
        return {
            "attestation_record": (
                lambda: att_report.encode_record(r["claims"], r["evidence"]),
                lambda: rep.check_fields(rep.strict_decode(r["payload"], "record", 16384), rep._RECORD_FIELDS, "r"),
            ),
            "attestation_record_tdx_quote": (
                lambda: att_report.encode_record(r["claims"], r["quote"]),
                lambda: rep.check_fields(rep.strict_decode(tdx_payload, "record", 16384), rep._RECORD_FIELDS, "r"),
            ),
            "attestation_envelope": (
                lambda: cc({"payload": env["payload"], "signature": env["signature"]}),
                lambda: rep.check_fields(rep.strict_decode(r["envelope"], "e", 16384), rep._ENVELOPE_FIELDS, "e"),
            ),
            "dev_evidence": (
                lambda: cc(rep.check_fields(dict(dev_map), dev_fields, "d")),
                lambda: rep.check_fields(rep.strict_decode(r["evidence"], "d", 1024), dev_fields, "d"),
            ),
            "claims": (lambda: r["claims"].to_cbor(), lambda: None),
            "domain_envelope": (
                lambda: canonical_dumps(dict(ann)),
                lambda: validate("envelope", "envelope", canonical_loads(r["announce"], max_bytes=32768)),
            ),
        }
    dev_record = decode_cbor(r["evidence"], DevEvidenceRecord)
    ann_record = decode_cbor(r["announce"], SignedEnvelope)
    return {
        "attestation_record": (
            lambda: att_report.encode_record(r["claims"], r["evidence"]),
            lambda: att_report.decode_record(r["payload"]),
        ),
        "attestation_record_tdx_quote": (
            lambda: att_report.encode_record(r["claims"], r["quote"]),
            lambda: att_report.decode_record(tdx_payload),
        ),
        "attestation_envelope": (
            lambda: encode_cbor(AttestationEnvelope(payload=env["payload"], signature=env["signature"])),
            lambda: decode_prefixed(r["envelope"]),
        ),
        "dev_evidence": (lambda: encode_cbor(dev_record), lambda: decode_cbor(r["evidence"], DevEvidenceRecord)),
        "claims": (lambda: r["claims"].to_cbor(), lambda: None),
        "domain_envelope": (lambda: encode_cbor(ann_record), lambda: decode_cbor(r["announce"], SignedEnvelope)),
    }


def _announcement_codecs() -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """(encode, decode) of a worker's announcement (v2: tokenizer and hardware), as this checkout does it:
    the payload (validated fields <-> canonical CBOR) and the whole signed message (seal; open, verify,
    decode: what every node's topic validator runs per gossip message)."""
    from libp2p.peer.id import ID

    from cocoon_node.mesh.announce import Announcement, Hardware, decode_announcement
    from cocoon_node.wire import canonical_loads

    key = create_new_key_pair(hashlib.sha256(b"bench-wire-announcer").digest())
    peer = ID.from_pubkey(key.public_key)
    hardware = Hardware(accelerator="NVIDIA H200", accelerator_count=8, accelerator_memory_mib=143_771,
                        hardware_source="detected", context_length=32_768, context_source="declared")
    ann = Announcement(peer_id=peer.to_bytes(), addrs=(f"/ip4/127.0.0.1/tcp/4001/p2p/{peer.to_base58()}",),
                       model="Qwen/Qwen3-8B", model_hash=bytes(32), backend="torch", synthetic=False,
                       price_prompt=1000, price_completion=2000, max_concurrent=8, load=1,
                       protocols=("/cocoon/inference/1.0.0",), tee_kind="tdx", seqno=42, issued_at=1_800_000_000,
                       expires_at=1_800_000_300, payout="0:" + "22" * 32, v=2, tokenizer=bytes(range(32)),
                       hardware=hardware)
    sealed = ann.seal(key.private_key)
    if hasattr(Announcement, "from_payload"):  # the msgspec type
        payload = ann.to_payload()
        codec = (ann.to_payload, lambda: Announcement.from_payload(payload))
    else:  # before: a dataclass, its dict checked by wire.schema (sealing wrote the dict unchecked)
        payload = canonical_dumps(ann.to_wire())
        codec = (lambda: canonical_dumps(ann.to_wire()),
                 lambda: Announcement.from_wire(canonical_loads(payload, max_bytes=4096)))
    return {"announcement": codec,
            "announcement_signed": (lambda: ann.seal(key.private_key), lambda: decode_announcement(sealed))}


def record_rates(seconds: float) -> dict[str, dict[str, float]]:
    r = _record_samples()
    out: dict[str, dict[str, float]] = {}
    for name, (enc, dec) in {**_record_codecs(r), **_announcement_codecs()}.items():
        out[name] = {"encode_per_s": round(_rate(enc, seconds)), "decode_per_s": round(_rate(dec, seconds))}
        if name == "claims":
            del out[name]["decode_per_s"]  # claims are only ever hashed, never decoded
    key = r["libp2p_key"]
    out["signed"] = {
        "sign_report_per_s": round(_rate(lambda: att.sign_report(r["claims"], r["evidence"], r["node"]), seconds)),
        "decode_and_verify_envelope_per_s": round(_rate(lambda: att.decode_and_verify_envelope(r["envelope"]),
                                                        seconds)),
        "seal_envelope_per_s": round(_rate(lambda: seal_envelope("cocoon/announce/v1", bytes(300), key.private_key),
                                           seconds)),
        "open_envelope_per_s": round(_rate(lambda: open_envelope(r["announce"], expected_domain="cocoon/announce/v1"),
                                           seconds)),
    }
    return out


class _Reader:
    """Adapts a libp2p stream to FrameStream's read/write (EOF raises in py-libp2p)."""

    def __init__(self, stream: Any) -> None:
        self._s = stream

    async def read(self, n: int | None = None) -> bytes:
        try:
            data: bytes = await self._s.read(n)
            return data
        except Exception:
            return b""

    async def write(self, data: bytes) -> None:
        await self._s.write(data)


async def stream_rate(text: str, frames: int) -> dict[str, float]:
    done = trio.Event()
    received = {"frames": 0, "bytes": 0, "end": 0.0}

    async def handler(stream: Any) -> None:
        fs = FrameStream(_Reader(stream), STREAM_CODEC, max_frame=MAX_FRAME) if isinstance(STREAM_CODEC, str) \
            else FrameStream(_Reader(stream), STREAM_CODEC)
        while received["frames"] < frames:
            frame = await fs.receive()
            if frame is None:
                break
            received["frames"] += 1
            received["bytes"] += len(frame["text"] if isinstance(frame, dict) else frame.text)
        received["end"] = time.perf_counter()
        done.set()

    async with AsyncExitStack() as stack:
        server = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
        await stack.enter_async_context(server.start())
        server.set_stream_handler(PROTOCOL, handler)
        client = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
        await stack.enter_async_context(client.start())
        with trio.fail_after(30):
            stream = await client.new_stream(server.peer_id, PROTOCOL, server.listen_addrs())
        payload = ENCODE(MAKE(text))
        t0 = time.perf_counter()
        with trio.fail_after(300):
            for _ in range(frames):
                await stream.write(payload)
            await done.wait()
        elapsed = received["end"] - t0
        await stream.close()
    return {"frames": frames, "frames_per_s": round(frames / elapsed),
            "mb_per_s_wire": round(frames * len(payload) / elapsed / 1e6, 2),
            "mb_per_s_text": round(received["bytes"] / elapsed / 1e6, 2), "frame_bytes": len(payload)}


async def main_async(frames: int, seconds: float, skip_stream: bool) -> dict[str, Any]:
    cases = {"token_delta": "hello ", "1KiB_delta": "x" * 1024}
    out: dict[str, Any] = {"bench": "wire", "cpus": os.cpu_count(), "codec": {}, "stream": {}}
    for name, text in cases.items():
        out["codec"][name] = codec_rates(text, seconds)
        if not skip_stream:
            out["stream"][name] = await stream_rate(text, frames)
    out["records"] = record_rates(seconds)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=20000)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--skip-stream", action="store_true", help="codec and record rates only")
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    logging.disable(logging.WARNING)  # dev evidence warns each time it is issued; not what we measure
    out = trio.run(main_async, args.frames, args.seconds, args.skip_stream)
    print(json.dumps(out))
    for name in out["codec"]:
        c, s = out["codec"][name], out["stream"].get(name)
        stream = f"; stream {s['frames_per_s']} frames/s = {s['mb_per_s_wire']} MB/s on the wire" if s else ""
        print(f"{name} ({c['frame_bytes']} B): encode {c['encode_per_s']}/s, decode {c['decode_per_s']}/s{stream}",
              file=sys.stdout)
    for name, rates in out["records"].items():
        print(f"{name}: " + ", ".join(f"{k.removesuffix('_per_s')} {v}/s" for k, v in rates.items()))


if __name__ == "__main__":
    main()
