"""SEV-SNP collateral: AMD's CRL shipped with the report and checked, and VLEK-signed reports through the gate.

No real AMD CRL and no VLEK-signed report with its ASVK are recorded in this repository (none could be found
in public test data here), so both run under the TEST AMD PKI of snp_helpers (fresh RSA keys, AMD's names and
algorithms: ARK-signed RSA-PSS SHA-384 CRL; VLEK <- ASVK <- ARK), on the real Milan report re-signed.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cocoon_node.attestation import (
    AttestationError,
    Policy,
    encode_snp_evidence,
    sign_report,
    verify_report,
)
from cocoon_node.attestation import snp as snp_mod
from cocoon_node.attestation._snp_certtable import SnpCertTable
from cocoon_node.attestation.collateral import decode_snp_collateral, encode_snp_collateral
from cocoon_node.attestation.kds import SnpCrlCache
from cocoon_node.attestation.snp_evidence import collect_snp_evidence, decode_snp_evidence
from tests.http_fakes import read_request_head

from .snp_helpers import TestAmdPki, _ca, _rsa, amd_name, fixed_p384, make_crl, make_pki, make_vcek, patch
from .snp_helpers import sign_report as resign
from .test_snp_evidence import FakeSevGuest
from .test_snp_gate import KEY, NODE, NOW, NOW_DT, PKI, POLICY, RAW, REAL_TCB, REPORT_DATA_AT, claims, snp_envelope

PEER = claims().peer_id
STRICT = replace(POLICY, require_collateral=True)


@pytest.fixture(autouse=True)
def amd_test_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust the test AMD PKI instead of AMD's (test only)."""
    monkeypatch.setattr(snp_mod, "AMD_SNP_ROOTS", PKI.roots)


def refused(check: str, env: bytes, policy: Policy = STRICT, now: int = NOW) -> str:
    with pytest.raises(AttestationError) as ei:
        verify_report(env, PEER, policy, now)
    assert ei.value.check == check, str(ei.value)
    return str(ei.value)


def test_shipped_crl_is_checked() -> None:
    v = verify_report(snp_envelope(claims()), PEER, STRICT, NOW)
    assert v.ok and any("AMD CRL checked" in r for r in v.reasons)


def test_a_crl_revoking_the_ask_is_refused() -> None:
    msg = refused("revoked", snp_envelope(claims(), crl=make_crl(PKI, revoked=(PKI.ask.serial_number,))))
    assert "SEV-Milan" in msg
    # a CRL revoking something else is fine
    assert verify_report(snp_envelope(claims(), crl=make_crl(PKI, revoked=(424242,))), PEER, STRICT, NOW).ok


def test_expired_forged_and_foreign_crls_are_refused() -> None:
    # evaluated inside / after / before the CRL's window (the report itself is fine at each of these times)
    late = make_crl(PKI, last_update=datetime(2025, 11, 1, tzinfo=UTC), next_update=datetime(2025, 12, 31, tzinfo=UTC))
    assert "not at 2026-01-01" in refused("crl", snp_envelope(claims(), crl=late))
    early = make_crl(PKI, last_update=datetime(2026, 1, 2, tzinfo=UTC))
    refused("crl", snp_envelope(claims(), crl=early))
    other = make_pki("another-amd")
    refused("crl", snp_envelope(claims(), crl=make_crl(other)))  # another root's CRL (issuer differs)
    forged = make_crl(PKI, signer=other.ark_key)  # right issuer name, wrong key
    assert "does not verify" in refused("crl", snp_envelope(claims(), crl=forged))
    flipped = bytearray(make_crl(PKI))
    flipped[-3] ^= 0x01
    refused("crl", snp_envelope(claims(), crl=bytes(flipped)))
    refused("crl", snp_envelope(claims(), crl=b"\x30\x03junk"))


def test_junk_collateral_bytes_are_refused() -> None:
    c = claims()
    raw = resign(patch(RAW, REPORT_DATA_AT, c.report_data()), KEY)
    from .test_snp_gate import TEST_VCEK

    env = sign_report(c, encode_snp_evidence(raw, TEST_VCEK), NODE, collateral=b"\xa1ajunk")
    refused("collateral", env, POLICY)


def test_missing_crl_refused_unless_the_policy_allows_it() -> None:
    bare = snp_envelope(claims(), crl=b"")
    assert "allow_missing_collateral" in refused("crl", bare)
    v = verify_report(bare, PEER, POLICY, NOW)  # require_collateral off (local, or allow_missing_collateral)
    assert v.ok and any("AMD CRL not checked" in r for r in v.reasons)


def test_testnet_config_requires_the_crl() -> None:
    from cocoon_node.config import load_config
    from cocoon_node.node.attest_policy import policy_from_config

    from .test_snp_gate import MEAS, MODEL, REP, snp_image_hash

    settings: dict[str, Any] = {"allowed_image_hashes": [snp_image_hash(REP).hex()],
                                "allowed_models": [f"m={MODEL.hex()}"], "allow_snp": True,
                                "allowed_snp_measurements": [MEAS.hex()]}
    testnet = {"node": {"network": "testnet"}, "payments": {"chain": "ton", "ton_network": "testnet"}}

    def policy(**kw: Any) -> Policy:
        return policy_from_config(load_config(env={}, overrides={**testnet, "policy": {**settings, **kw}}))

    assert verify_report(snp_envelope(claims()), PEER, policy(), NOW).ok
    refused("crl", snp_envelope(claims(), crl=b""), policy())
    assert verify_report(snp_envelope(claims(), crl=b""), PEER, policy(allow_missing_collateral=True), NOW).ok


# --- VLEK: a cloud provider's key, VLEK <- ASVK <- ARK ------------------------------------------------------

ASVK_KEY = _rsa("test-amd/asvk")
ASVK = _ca(amd_name("SEV-VLEK-Milan"), PKI.ark.subject, ASVK_KEY.public_key(), PKI.ark_key)
ASVK_PKI = TestAmdPki(PKI.product, PKI.ark, PKI.ark_key, ASVK, ASVK_KEY)
VLEK_KEY = fixed_p384("test-vlek")
VLEK = make_vcek(ASVK_PKI, VLEK_KEY, hw_id=None, tcb=REAL_TCB, csp_id="cc-test-1.example.com", cn="SEV-VLEK")
VLEK_SIGNED = 1 << 2  # KEY_INFO (0x48) bits 4:2 SIGNING_KEY = 1: the VLEK


def vlek_report(report_data: bytes) -> bytes:
    return resign(patch(patch(RAW, REPORT_DATA_AT, report_data), 0x48, VLEK_SIGNED.to_bytes(4, "little")), VLEK_KEY)


def vlek_envelope(asvk: bytes = ASVK.public_bytes(Encoding.DER), crl: bytes | None = None) -> bytes:
    c = claims()
    evidence = encode_snp_evidence(vlek_report(c.report_data()), VLEK, asvk)
    return sign_report(c, evidence, NODE, collateral=encode_snp_collateral(make_crl(PKI) if crl is None else crl))


VLEK_POLICY = replace(STRICT, snp=replace(POLICY.snp, allow_vlek=True))


def test_vlek_signed_report_through_the_gate() -> None:
    env = vlek_envelope()
    v = verify_report(env, PEER, VLEK_POLICY, NOW)
    assert v.ok and any("VLEK" in r for r in v.reasons)
    assert "VCEK" in refused("signing_key", env, STRICT)  # a policy that takes VCEKs only
    # the ASVK must be the pinned ARK's: one signed by another root of the same name fails its signature
    other = make_pki("rogue-amd")
    rogue = _ca(amd_name("SEV-VLEK-Milan"), other.ark.subject, ASVK_KEY.public_key(), other.ark_key)
    assert "ARK" in refused("cert_chain", vlek_envelope(rogue.public_bytes(Encoding.DER)), VLEK_POLICY)
    # without the ASVK the VLEK chains to no pinned ASK
    refused("ark_root", vlek_envelope(b""), VLEK_POLICY)
    # AMD revoking the ASVK revokes every VLEK under it
    refused("revoked", vlek_envelope(crl=make_crl(PKI, revoked=(ASVK.serial_number,))), VLEK_POLICY)


def test_vlek_policy_from_config() -> None:
    from cocoon_node.config import load_config
    from cocoon_node.node.attest_policy import policy_from_config

    assert not policy_from_config(load_config(env={})).snp.allow_vlek
    assert policy_from_config(load_config(env={}, overrides={"policy": {"allow_snp_vlek": True}})).snp.allow_vlek


def test_worker_collects_vlek_and_asvk_from_the_host_table(tmp_path: Path) -> None:
    c = claims()
    table = SnpCertTable(vlek=VLEK, ask=ASVK.public_bytes(Encoding.DER)).to_bytes()
    guest = FakeSevGuest(tmp_path, vlek_report(c.report_data()), table)
    ev = decode_snp_evidence(collect_snp_evidence(c.report_data(), tsm=guest))
    assert ev.vcek == VLEK and x509.load_der_x509_certificate(ev.ask).subject == ASVK.subject
    with pytest.raises(Exception, match="ASVK"):
        collect_snp_evidence(c.report_data(), tsm=FakeSevGuest(tmp_path, RAW, SnpCertTable(vlek=VLEK).to_bytes()))


# --- the worker's CRL fetch from AMD's KDS (a local stand-in on 127.0.0.1) ----------------------------------

async def _kds(crl: bytes, paths: list[str], stream: trio.SocketStream) -> None:
    async with stream:
        data = await read_request_head(stream)
        if data is None:
            return
        paths.append(data.split(b" ")[1].decode())
        status = "200 OK" if crl else "503 Unavailable"
        await stream.send_all(f"HTTP/1.1 {status}\r\nContent-Length: {len(crl)}\r\nConnection: close\r\n\r\n".encode()
                              + crl)


async def test_worker_fetches_caches_and_ships_the_crl(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from .test_snp_gate import TEST_VCEK

    c = claims()
    evidence = encode_snp_evidence(resign(patch(RAW, REPORT_DATA_AT, c.report_data()), KEY), TEST_VCEK)
    crl = make_crl(PKI)
    paths: list[str] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, partial(_kds, crl, paths), 0, host="127.0.0.1"))
            url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            cache = SnpCrlCache(tmp_path / "col", url, clock=lambda: NOW_DT, roots=PKI.roots)
            shipped = await cache.for_evidence(evidence)
            again = await cache.for_evidence(evidence)
            nursery.cancel_scope.cancel()
    assert decode_snp_collateral(shipped) == crl and again == shipped
    assert paths == ["/vcek/v1/Milan/crl"] and cache.fetches == 1
    assert (tmp_path / "col" / "snp-crl-milan-vcek.der").stat().st_mode & 0o777 == 0o600
    # a KDS that answers 503, nothing cached: nothing shipped, and the log says why
    paths.clear()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, partial(_kds, b"", paths), 0, host="127.0.0.1"))
            url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            cache = SnpCrlCache(tmp_path / "empty", url, clock=lambda: NOW_DT, roots=PKI.roots)
            with caplog.at_level(logging.WARNING):
                assert await cache.for_evidence(evidence) == b""
            nursery.cancel_scope.cancel()
    assert "HTTP 503" in caplog.text and "WITHOUT" in caplog.text





def test_a_verdict_lasts_no_longer_than_its_crl() -> None:
    c = claims(expires_at=NOW + 30 * 86400)
    crl = make_crl(PKI, next_update=datetime(2026, 1, 15, tzinfo=UTC))
    v = verify_report(snp_envelope(c, crl=crl), PEER, STRICT, NOW)
    assert v.ok and v.expires_at == int(datetime(2026, 1, 15, tzinfo=UTC).timestamp())
