"""Fresh, nonce-bound attestation (``protocols/attest.toml``): the worker's answer and the requester's fetch.

A client asks the requester's API for ``GET /v1/cocoon/attestation/{worker}?nonce=HEX``; the requester asks
the worker over ``/cocoon/attest/1.0.0``, the worker produces new evidence over
:func:`~cocoon_node.attestation.fresh.nonce_report_data` (its report and the client's nonce) and the client
checks it itself (:func:`~cocoon_node.attestation.fresh.verify_fresh_evidence`), trusting the requester for
nothing. Evidence is slow and the TEE is shared, so a worker answers few at a time and few per peer.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Protocol

import trio
from libp2p.peer.id import ID

from cocoon_node.attestation.fresh import nonce_report_data
from cocoon_node.mesh import PeerRateLimit
from cocoon_node.wire import FrameError, FrameStream, load_protocol
from cocoon_node.wire.messages.attest import CODEC, PROTOCOL_ID, AttestError, AttestRequest, AttestResponse

log = logging.getLogger(__name__)
_META = load_protocol("attest").meta
MAX_CONCURRENT: int = int(_META["max_concurrent"])
RATE_PER_MINUTE: int = int(_META["rate_per_minute"])

__all__ = ["PROTOCOL_ID", "EvidenceSource", "FreshAttestError", "FreshAttestServer", "fetch_fresh_attestation",
           "report_from_worker"]


class EvidenceSource(Protocol):
    """What the server needs of :class:`~cocoon_node.node.attest.ReportPublisher`."""

    current: bytes | None

    def evidence(self, report_data: bytes) -> bytes: ...


class FreshAttestError(RuntimeError):
    """The worker did not give fresh evidence; ``code`` is its attest_error code, or ours."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class FreshAttestServer:
    """Worker side of ``/cocoon/attest/1.0.0``."""

    def __init__(self, source: EvidenceSource, *, max_concurrent: int = MAX_CONCURRENT,
                 rate_per_minute: int = RATE_PER_MINUTE) -> None:
        self.source = source
        self.rate_per_minute = rate_per_minute
        self._slots = trio.CapacityLimiter(max_concurrent)
        self._rate = PeerRateLimit(rate_per_minute)
        self.served = 0
        self.refused: dict[str, int] = {}


    async def _answer(self, peer: ID, request: AttestRequest) -> AttestResponse | AttestError:
        report = self.source.current
        if report is None:
            return AttestError(code="no_report", message="no attestation report yet")
        if not self._rate.allow(peer):
            return AttestError(code="busy", message=f"more than {self.rate_per_minute} requests a minute")
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            return AttestError(code="busy", message="fresh attestations already in flight")
        try:
            evidence = await trio.to_thread.run_sync(self.source.evidence, nonce_report_data(report, request.nonce))
        except Exception as exc:  # configfs-tsm absent or failing: say so, never crash the stream handler
            log.warning("fresh attestation failed: %s", exc)
            return AttestError(code="tee", message=str(exc)[:256])
        finally:
            self._slots.release()
        self.served += 1
        return AttestResponse(report=report, evidence=evidence)

    async def handle(self, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id
        frames = FrameStream(stream, CODEC)
        try:
            with trio.fail_after(10):
                request = await frames.receive()
            if not isinstance(request, AttestRequest):
                raise FrameError("expected an attest_request")
            answer = await self._answer(peer, request)
            if isinstance(answer, AttestError):
                self.refused[answer.code] = self.refused.get(answer.code, 0) + 1
            with trio.fail_after(10):
                await frames.send(answer)
        except (FrameError, trio.TooSlowError) as exc:
            self.refused["bad_request"] = self.refused.get("bad_request", 0) + 1
            log.debug("attest request from %s dropped: %s", peer, exc)
        except Exception as exc:  # a peer vanishing mid-exchange is its problem
            log.debug("attest exchange with %s failed: %s", peer, exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.close()
                except Exception:
                    pass


async def fetch_fresh_attestation(open_stream: Any, nonce: bytes, *, timeout: float = 30.0) -> AttestResponse:
    """Requester side: ask over a stream from ``open_stream()`` (awaitable); raise :class:`FreshAttestError`."""
    try:
        with trio.fail_after(timeout):
            stream = await open_stream()
            frames = FrameStream(stream, CODEC)
            try:
                await frames.send(AttestRequest(v=1, nonce=bytes(nonce)))
                answer = await frames.receive()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await stream.close()
                    except Exception:
                        pass
    except trio.TooSlowError:
        raise FreshAttestError("timeout", f"no answer in {timeout:.0f}s") from None
    except FrameError as exc:
        raise FreshAttestError("protocol", f"worker sent a bad frame: {exc}") from None
    except Exception as exc:  # dial or stream failure
        raise FreshAttestError("unreachable", f"could not reach the worker: {exc}") from None
    match answer:
        case AttestResponse():
            return answer
        case AttestError(code=code, message=message):
            raise FreshAttestError(code, message)
        case None:
            raise FreshAttestError("protocol", "worker closed the stream without an answer")
        case _:
            raise FreshAttestError("protocol", "unexpected frame")


async def report_from_worker(open_stream: Any, peer_id: bytes, policy: Any, *, timeout: float = 10.0) -> bytes:
    """A worker's report straight from the worker, for when the DHT is slow (the gate's ``direct`` fetch).

    Asked over ``/cocoon/attest/1.0.0`` with a nonce of our own, so the answer also carries fresh evidence: it
    is accepted only when that evidence verifies over the report and our nonce (the worker holds the TEE the
    report names now, not merely a copy of an old report). The caller verifies the report itself as it would
    a DHT record. Raises :class:`FreshAttestError` or :class:`~cocoon_node.attestation.AttestationError`."""
    from cocoon_node.attestation.fresh import verify_fresh_evidence

    nonce = secrets.token_bytes(32)
    answer = await fetch_fresh_attestation(open_stream, nonce, timeout=timeout)
    verify_fresh_evidence(answer.report, answer.evidence, nonce, peer_id, policy)
    return answer.report


def describe_fresh(worker: str, nonce: bytes, answer: AttestResponse, policy: Any, now: int | None = None
                   ) -> dict[str, Any]:
    """The API's answer: everything a client needs to check the evidence itself, and our own verdict on it."""
    from dataclasses import asdict

    from cocoon_node.attestation import TEE_DEV, AttestationError, decode_and_verify_envelope
    from cocoon_node.attestation.fresh import verify_fresh_evidence

    out: dict[str, Any] = {
        "object": "cocoon.attestation", "worker": worker, "nonce": nonce.hex(), "tee_kind": None,
        "report": answer.report.hex(), "evidence": answer.evidence.hex(),
        "report_data": nonce_report_data(answer.report, nonce).hex(),
        "binding": "report_data = SHA-512(b'cocoon/attestation-nonce/v1' || SHA-256(report) || nonce)",
    }
    try:
        kind = decode_and_verify_envelope(answer.report).claims.tee_kind
        out["tee_kind"] = kind
        out["dev_insecure"] = kind == TEE_DEV
        if kind == TEE_DEV:
            out["warning"] = "dev-INSECURE: this evidence proves nothing about hardware"
        verdict = verify_fresh_evidence(answer.report, answer.evidence, nonce, ID.from_base58(worker).to_bytes(),
                                        policy, now)
        out["requester_verdict"] = {**asdict(verdict), "reasons": list(verdict.reasons)}
    except AttestationError as exc:
        out["requester_verdict"] = {"ok": False, "check": exc.check, "reasons": [str(exc)]}
    return out
