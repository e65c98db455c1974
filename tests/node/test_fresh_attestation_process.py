"""GET /v1/cocoon/attestation/{worker}?nonce=HEX over real processes (dev-INSECURE TEE): the client checks the
returned report and fresh evidence itself, offline, against its own nonce, trusting the requester for nothing."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
import trio
from libp2p.peer.id import ID

from cocoon_node.attestation import ANY, TEE_DEV, AttestationError, Policy
from cocoon_node.attestation.fresh import nonce_report_data, verify_fresh_evidence
from cocoon_node.cluster import Cluster, worker_args

from .conftest import FAST, api_url, wait_until, worker_ids

pytestmark = pytest.mark.slow
CLIENT_POLICY = Policy(tee_kinds=frozenset({TEE_DEV}), image_hashes=ANY, model_hashes=ANY)


async def test_nonce_bound_attestation_checked_by_the_client(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    async with cluster.running():
        req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                     "--api-port", "0"])
        worker = await cluster.start_node("w", worker_args(req.addr, "synthetic", extra=FAST))
        url = api_url(cluster)

        async def listed() -> bool:
            return worker.peer_id in await worker_ids(cluster)

        await wait_until(listed, timeout=60)
        async with httpx.AsyncClient(timeout=60) as client:
            with trio.fail_after(120):
                nonce = secrets.token_bytes(32)

                async def fetch(n: bytes, who: str = worker.peer_id) -> httpx.Response:
                    return await client.get(f"{url}/v1/cocoon/attestation/{who}", params={"nonce": n.hex()})

                got: dict[str, httpx.Response] = {}

                async def answered() -> bool:  # the worker may not have made its first report yet
                    got["r"] = await fetch(nonce)
                    return not (got["r"].status_code == 502 and "no_report" in got["r"].text)

                await wait_until(answered, timeout=60)
                resp = got["r"]
                assert resp.status_code == 200, resp.text
                body = resp.json()
                assert body["tee_kind"] == TEE_DEV and body["dev_insecure"] is True
                assert "dev-INSECURE" in body["warning"]
                assert body["requester_verdict"]["ok"] is True
                report, evidence = bytes.fromhex(body["report"]), bytes.fromhex(body["evidence"])
                assert body["report_data"] == nonce_report_data(report, nonce).hex()
                # the client's own check, offline
                peer = ID.from_base58(worker.peer_id).to_bytes()
                assert verify_fresh_evidence(report, evidence, nonce, peer, CLIENT_POLICY).ok
                with pytest.raises(AttestationError) as ei:  # evidence for one nonce is no proof for another
                    verify_fresh_evidence(report, evidence, secrets.token_bytes(32), peer, CLIENT_POLICY)
                assert ei.value.check == "report_data"
                again = (await fetch(other := secrets.token_bytes(32))).json()
                assert again["evidence"] != body["evidence"]
                assert verify_fresh_evidence(report, bytes.fromhex(again["evidence"]), other, peer, CLIENT_POLICY).ok
                # bad input: a clear 400, an unknown worker a 404
                for bad in ("", "zz", "00" * 31, "00" * 33):
                    r = await client.get(f"{url}/v1/cocoon/attestation/{worker.peer_id}", params={"nonce": bad})
                    assert r.status_code == 400 and r.json()["error"]["param"] == "nonce", (bad, r.text)
                r = await fetch(nonce, req.peer_id)  # the requester is no live worker
                assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_worker"
