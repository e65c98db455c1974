"""A paid request's receipt names the voucher that paid it (issue 16), on the EMULATED chain: the requester's
newest voucher once the tail is paid, which the worker took (stored) before signing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon_node.inference.stream import PROTOCOL_ID, InferenceServer, call_worker
from cocoon_node.node.receipt_signer import WorkerReceipts
from cocoon_node.receipts import decode_receipt, verify_receipt
from tests.payments.conftest import Parties
from tests.payments.test_metering import MODEL, PC, PP, WORKER_PEER, chat, world
from tests.receipts.test_stream_receipts import POLICY, WEIGHTS, dev_report


async def test_a_paid_receipt_names_the_tail_voucher(parties: Parties, tmp_path: Path) -> None:
    async with world(parties, tmp_path) as w:
        kp = w.worker_mesh._key_pair  # the worker's node key: the one its attestation binds
        report = dev_report(Ed25519PrivateKey.from_private_bytes(kp.private_key.to_bytes()), kp.public_key.to_bytes())
        server: InferenceServer = w.server
        server.receipts = WorkerReceipts(kp, w.worker_mesh.peer_id.to_bytes(), model_name=MODEL,
                                         model_hash=WEIGHTS, report=lambda: report)

        async def reports(peer: bytes, report_hash: bytes) -> bytes | None:
            return report if hashlib.sha256(report).digest() == report_hash else None

        with trio.fail_after(90):
            for words in (30, 12):
                meter: Any = await w.meter_for()
                stream = await w.req_mesh.new_stream(w.worker_mesh.peer_id, PROTOCOL_ID, w.worker_mesh.listen_addrs())
                async with call_worker(stream, chat(words), price_prompt=PP, price_completion=PC, meter=meter,
                                       receipts=(w.worker_mesh.peer_id.to_bytes(), reports)) as call:
                    async for _ in call.deltas():
                        pass
                    assert call.final is not None and call.final.receipt is not None, call.final
                    r = decode_receipt(call.final.receipt.envelope)
                ch = w.manager.channels[WORKER_PEER]
                assert ch.newest is not None
                assert (r.channel, r.voucher_seqno, r.voucher_cumulative) == (ch.address, ch.newest.seqno,
                                                                            ch.newest.cumulative)
                assert (r.prompt_tokens, r.completion_tokens, r.price_prompt, r.price_completion) == (
                    words, words, PP, PC)
                # the worker holds the voucher its receipt names (it took it before signing)
                held = await w.worker_store.run(w.worker_store.newest_voucher, ch.address)
                assert held is not None and held.seqno >= r.voucher_seqno
                assert verify_receipt(call.final.receipt.envelope, report, POLICY).receipt == r
