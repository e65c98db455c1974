"""Receipts on the stream (issue 16): a worker signs each completed request, the requester checks, stores and
returns the receipt, and a worker that lies in it is caught and blamed. Real libp2p streams in one process."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.api import openai_app
from cocoon_node.attestation import ANY, TEE_DEV, Claims, DevPlatform, Policy, dev_image_hash, sign_report
from cocoon_node.inference import InferenceServer, Requester, ServedRequest, SyntheticBackend, WorkerTerms
from cocoon_node.inference.stream import PROTOCOL_ID
from cocoon_node.mesh import Announcement, Mesh, MeshSettings
from cocoon_node.node.receipt_signer import WorkerReceipts
from cocoon_node.payments.receipt_store import ReceiptStore
from cocoon_node.receipts import sign_receipt, verify_receipt
from cocoon_node.receipts.cli import verify_receipt_file
from cocoon_node.wire.messages.receipt import Receipt
from tests.attestation.att_helpers import fixed_ed25519
from tests.conftest import MODEL, TrustingAttestor, worker_announcement

KEY = "sk-test"
AUTH = {"authorization": f"Bearer {KEY}"}
POLICY = Policy(tee_kinds=frozenset({TEE_DEV}), image_hashes=ANY, model_hashes=ANY)
WEIGHTS = b"\x01" * 32  # what worker_announcement announces


def dev_report(key: Ed25519PrivateKey, public_raw: bytes) -> bytes:
    now = int(time.time())
    claims = Claims.for_key(public_raw, model_name=MODEL, model_hash=WEIGHTS, node_version="0.1.0",
                            issued_at=now - 10, expires_at=now + 3600, tee_kind=TEE_DEV, backend="synthetic")
    dev = DevPlatform(fixed_ed25519("receipt-stream-dev"))
    return sign_report(claims, dev.evidence(claims.report_data(), dev_image_hash("0.1.0")), key)


class LyingReceipts(WorkerReceipts):
    """Signs receipts that disagree with what it streamed, in one way (``lie``)."""

    def __init__(self, *args: Any, lie: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lie = lie

    def sign(self, served: ServedRequest) -> bytes:
        if self.lie == "output":
            return super().sign(replace(served, output=served.output + " and more"))
        if self.lie == "tokens":
            return super().sign(replace(served, completion_tokens=served.completion_tokens + 3))
        envelope = super().sign(served)
        if self.lie == "garbage":
            return b"\xa2not a receipt"
        payload = msgspec.structs.asdict(_payload(envelope))
        if self.lie == "report":  # names a report the worker's attestation is not
            return sign_receipt(Receipt(**{**payload, "report_hash": hashlib.sha256(b"another report").digest()}),
                                self._key)
        if self.lie == "voucher":
            return sign_receipt(Receipt(**{**payload, "voucher_seqno": payload["voucher_seqno"] + 1,
                                           "voucher_cumulative": payload["voucher_cumulative"] + 5_000}), self._key)
        assert self.lie == "key"
        return sign_receipt(Receipt(**payload), fixed_ed25519("not-the-attested-key"))


def _payload(envelope: bytes) -> Receipt:
    from cocoon_node.receipts import decode_receipt
    return decode_receipt(envelope)


@dataclass
class Harness:
    app: Any
    requester: Requester
    server: InferenceServer
    store: ReceiptStore
    report: bytes
    worker: Announcement
    open_stream: Any

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://requester")


@asynccontextmanager
async def harness(tmp: Path, *, lie: str | None = None, receipts: bool = True,
                  ask: bool = True) -> AsyncIterator[Harness]:
    kp = create_new_key_pair()
    key = Ed25519PrivateKey.from_private_bytes(kp.private_key.to_bytes())
    report = dev_report(key, kp.public_key.to_bytes())
    backend = SyntheticBackend(tokens_per_second=500)
    server = InferenceServer(backend, WorkerTerms(MODEL, price_prompt=1, price_completion=1, max_concurrent=4,
                                                  max_tokens_cap=512))
    async with Mesh(kp, MeshSettings(local_cluster=True)).start() as wm:
        async with Mesh(create_new_key_pair(), MeshSettings(local_cluster=True,
                                                            bootstrap=(wm.listen_addrs()[0],))).start() as cm:
            if receipts:
                kind = WorkerReceipts if lie is None else LyingReceipts
                extra = {} if lie is None else {"lie": lie}
                server.receipts = kind(kp, wm.peer_id.to_bytes(), model_name=MODEL, model_hash=WEIGHTS,
                                       report=lambda: report, **extra)
            wm.set_stream_handler(PROTOCOL_ID, server.handle)
            workers = [worker_announcement(wm)]
            lookups: list[bytes] = []

            async def reports(peer: bytes, report_hash: bytes) -> bytes | None:
                """The gate's part (AttestationGate.attested_report): the worker's verified report by hash."""
                lookups.append(report_hash)
                ok = peer == wm.peer_id.to_bytes() and hashlib.sha256(report).digest() == report_hash
                return report if ok else None

            async def open_stream(a: Announcement) -> Any:
                return await cm.new_stream(a.peer, PROTOCOL_ID, a.addrs)

            requester = Requester(lambda: workers, open_stream, TrustingAttestor(), max_price_prompt=10,
                                  max_price_completion=10, first_token_timeout=10, reports=reports if ask else None)
            store = ReceiptStore(tmp / "receipts.db")
            models = [{"id": MODEL, "object": "model", "created": 0, "owned_by": "cocoon-mesh"}]
            app = openai_app(requester, api_key=KEY, models=lambda: models, receipts=store)
            try:
                yield Harness(app, requester, server, store, report, workers[0], open_stream)
            finally:
                store.close()


def _chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "one two three four five"}], **kw}


async def test_json_answer_carries_a_stored_receipt_that_verifies_offline(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    async with harness(tmp_path) as h, h.http() as http:
        with trio.fail_after(60):
            r = await http.post("/v1/chat/completions", json=_chat(), headers=AUTH)
            assert r.status_code == 200, r.text
            body = r.json()
            got = body["cocoon"]["receipt"]
            assert got is not None and body["cocoon"]["receipt_missing"] == ""
            fields = got["fields"]
            text = body["choices"][0]["message"]["content"]
            assert fields["output_digest"] == hashlib.sha256(text.encode()).hexdigest()
            assert (fields["prompt_tokens"], fields["completion_tokens"]) == (
                body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
            assert (fields["channel"], fields["voucher_seqno"], fields["voucher_cumulative"]) == ("", 0, 0)
            # the library call, with nothing but the two blobs
            check = verify_receipt(bytes.fromhex(got["receipt"]), bytes.fromhex(got["attestation_report"]), POLICY)
            assert check.receipt.model_name == MODEL and check.report.ok
            # stored, and served again under its completion id
            again = await http.get(f"/v1/cocoon/receipts/{body['id']}", headers=AUTH)
            assert again.status_code == 200 and again.json()["receipt"] == got["receipt"]
            assert h.store.count() == 1
            # API-key protected like the rest
            assert (await http.get(f"/v1/cocoon/receipts/{body['id']}")).status_code == 401
            # the CLI on a file saved from the API's answer
            saved = tmp_path / "receipt.json"
            saved.write_text(again.text)
            assert verify_receipt_file(saved, allow_dev_tee=True) == 0
            assert "RECEIPT VERIFIES" in capsys.readouterr().out
            # a byte changed in the saved receipt: refused
            tampered = dict(again.json())
            blob = bytearray(bytes.fromhex(tampered["receipt"]))
            blob[-1] ^= 1
            tampered["receipt"] = blob.hex()
            saved.write_text(json.dumps(tampered))
            assert verify_receipt_file(saved, allow_dev_tee=True) == 1
            assert "DOES NOT VERIFY" in capsys.readouterr().out


async def test_unknown_completion_id_is_a_404_in_openai_shape(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, h.http() as http:
        with trio.fail_after(30):
            r = await http.get("/v1/cocoon/receipts/chatcmpl-nope", headers=AUTH)
        assert r.status_code == 404
        err = r.json()["error"]
        assert err["code"] == "receipt_not_found" and err["type"] == "invalid_request_error" and "message" in err


async def test_final_sse_chunk_carries_the_receipt(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, h.http() as http:
        with trio.fail_after(60):
            chunks, text = [], []
            async with http.stream("POST", "/v1/chat/completions", json=_chat(stream=True), headers=AUTH) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        chunks.append(json.loads(line[6:]))
            for c in chunks:
                text.append(c["choices"][0]["delta"].get("content", "") if c["choices"] else "")
            last = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
            got = last["cocoon"]["receipt"]
            assert got["fields"]["output_digest"] == hashlib.sha256("".join(text).encode()).hexdigest()
            verify_receipt(bytes.fromhex(got["receipt"]), bytes.fromhex(got["attestation_report"]), POLICY)
            stored = await http.get(f"/v1/cocoon/receipts/{last['id']}", headers=AUTH)
            assert stored.status_code == 200 and stored.json()["receipt"] == got["receipt"]


@pytest.mark.parametrize("lie", ["output", "tokens", "voucher", "key", "report", "garbage"])
async def test_a_worker_that_lies_in_its_receipt_is_caught_and_blamed(tmp_path: Path, lie: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    async with harness(tmp_path, lie=lie) as h, h.http() as http:
        with trio.fail_after(60):
            r = await http.post("/v1/chat/completions", json=_chat(), headers=AUTH)
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "bad_receipt"
        rep = h.requester.selector.reputation(h.worker.peer_id)
        assert rep.failure_rate > 0 and rep.successes == 0  # a worker fault
        assert h.store.count() == 0
        field = {"output": "output_digest", "tokens": "completion_tokens", "voucher": "voucher_seqno",
                 "key": "signature", "report": "report_hash", "garbage": "format"}[lie]
        logged = [rec.getMessage() for rec in caplog.records if "disagrees" in rec.getMessage()]
        assert logged and f"field {field}" in logged[0], logged  # logged with both values


async def test_a_worker_without_receipts_still_answers_receipt_less(tmp_path: Path) -> None:
    async with harness(tmp_path, receipts=False) as h, h.http() as http:
        with trio.fail_after(60):
            for _ in range(2):  # the stream it closed is not reused: the next request works too
                r = await http.post("/v1/chat/completions", json=_chat(), headers=AUTH)
                assert r.status_code == 200, r.text
                assert r.json()["cocoon"]["receipt"] is None and r.json()["cocoon"]["receipt_missing"]
        assert h.requester.selector.reputation(h.worker.peer_id).failure_rate == 0
        assert h.store.count() == 0


async def test_a_requester_that_asks_for_no_receipt_gets_none(tmp_path: Path) -> None:
    """Code before receipts never sends a receipt request: a signing worker answers it as before, on a
    stream it keeps open for the next request."""
    async with harness(tmp_path, ask=False) as h, h.http() as http:
        with trio.fail_after(60):
            for _ in range(2):
                r = await http.post("/v1/chat/completions", json=_chat(), headers=AUTH)
                assert r.status_code == 200, r.text
                assert r.json()["cocoon"] == {"receipt": None, "receipt_missing": "not asked for"}
        assert isinstance(h.server.receipts, WorkerReceipts) and h.server.receipts.signed == 0
        assert h.server.stats.served == 2 and h.server.stats.failed == 0


async def test_bad_receipt_requests_get_no_receipt_and_cost_nothing(tmp_path: Path) -> None:
    """A receipt request before ``final`` is a protocol error; one naming an unreadable voucher gets no receipt
    (the stream is closed); neither reaches the signer."""
    from cocoon_node.inference.port import open_frames
    from cocoon_node.wire.messages.inference import (
        AcceptFrame,
        ErrorFrame,
        FinalFrame,
        ReceiptRequestFrame,
        RequestFrame,
    )
    from tests.conftest import chat_request

    async with harness(tmp_path) as h:
        signer = h.server.receipts
        assert isinstance(signer, WorkerReceipts)
        with trio.fail_after(30):
            for early in (True, False):
                frames = open_frames(await h.open_stream(h.worker))
                await frames.send(RequestFrame(v=1, id="r1", chat=chat_request(40, max_tokens=40).to_wire(),
                                               price_prompt=1, price_completion=1))
                assert isinstance(await frames.receive(), AcceptFrame)
                if early:
                    await frames.send(ReceiptRequestFrame(id="r1"))
                    frame = await frames.receive()
                    while frame is not None and not isinstance(frame, (ErrorFrame, FinalFrame)):
                        frame = await frames.receive()
                    assert isinstance(frame, ErrorFrame) and frame.code == "protocol", frame
                    continue
                frame = await frames.receive()
                while not isinstance(frame, FinalFrame):
                    frame = await frames.receive()
                await frames.send(ReceiptRequestFrame(id="r1", voucher=b"not a voucher"))
                assert await frames.receive() is None  # no receipt: the worker hung up
        assert signer.signed == 0


async def test_text_completions_carry_each_prompts_receipt_under_its_chat_completion_id(tmp_path: Path) -> None:
    """/v1/completions answers in its own id; each prompt's receipt names the chat completion it is stored under."""
    async with harness(tmp_path) as h, h.http() as http:
        with trio.fail_after(60):
            body = {"model": MODEL, "prompt": ["one two three", "four five"], "max_tokens": 8}
            r = await http.post("/v1/completions", json=body, headers=AUTH)
            assert r.status_code == 200, r.text
            answer = r.json()
            per_prompt = answer["cocoon"]["choices"]
            assert len(per_prompt) == 2
            for choice, got in zip(answer["choices"], per_prompt, strict=True):
                fields = got["receipt"]["fields"]
                assert fields["output_digest"] == hashlib.sha256(choice["text"].encode()).hexdigest()
                again = await http.get(f"/v1/cocoon/receipts/{got['completion_id']}", headers=AUTH)
                assert again.status_code == 200 and again.json()["receipt"] == got["receipt"]["receipt"]
            streamed: list[dict[str, Any]] = []
            async with http.stream("POST", "/v1/completions", json={**body, "prompt": "six seven", "stream": True},
                                   headers=AUTH) as s:
                async for line in s.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        streamed.append(json.loads(line[6:]))
            last = next(c for c in streamed if "cocoon" in c)
            text = "".join(c["choices"][0]["text"] for c in streamed if c.get("choices"))
            assert last["cocoon"]["receipt"]["fields"]["output_digest"] == hashlib.sha256(text.encode()).hexdigest()
            assert (await http.get(f"/v1/cocoon/receipts/{last['cocoon']['completion_id']}",
                                   headers=AUTH)).status_code == 200
            assert h.store.count() == 3
