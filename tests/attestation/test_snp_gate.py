"""SEV-SNP reports through the attestation gate (verify_report): evidence, claims binding, policy, expiry.

The real Milan report (tests/data/sev-snp-milan) goes through the gate with AMD's pinned roots: every link
verifies and the report is refused only because its REPORT_DATA is someone else's. For the accepting path the
real report gets our claims' REPORT_DATA and is re-signed by a test VCEK carrying the real chip id and TCB,
verified under the test PKI (monkeypatched roots, test only); a worker produces exactly that through a fake
configfs-tsm that plays the PSP.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from libp2p.crypto.ed25519 import Ed25519PrivateKey as Libp2pEd25519Key
from libp2p.crypto.keys import KeyPair

from cocoon_node.attestation import (
    ANY,
    TEE_DEV,
    TEE_SNP,
    TEE_TDX,
    AttestationError,
    Claims,
    Policy,
    SnpPolicy,
    TcbVersion,
    check_report,
    decode_snp_evidence,
    encode_snp_evidence,
    parse_snp_report,
    sign_report,
    snp_image_hash,
    verify_report,
)
from cocoon_node.attestation import snp as snp_mod
from cocoon_node.attestation._snp_certtable import SnpCertTable
from cocoon_node.attestation.collateral import encode_snp_collateral
from cocoon_node.node.attest import ReportPublisher

from .att_helpers import fixed_ed25519, real_quote_bytes
from .snp_helpers import NOW as NOW_DT
from .snp_helpers import fixed_p384, make_crl, make_pki, make_vcek, patch, real_report, real_turin_vcek, real_vcek
from .snp_helpers import sign_report as resign
from .test_snp_evidence import FakeSevGuest

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

NOW = int(NOW_DT.timestamp())
NODE = fixed_ed25519("snp-node")
NODE_RAW = NODE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
RAW = real_report()
REP = parse_snp_report(RAW)
MEAS = REP.measurement
REAL_TCB = TcbVersion(boot_loader=3, tee=0, snp=8, microcode=115)
PKI = make_pki("snp-gate")
KEY = fixed_p384("snp-gate-vcek")
TEST_VCEK = make_vcek(PKI, KEY, hw_id=REP.chip_id, tcb=REAL_TCB)
MODEL = b"\x11" * 32
REPORT_DATA_AT = 0x50


def claims(**kw: Any) -> Claims:
    base: dict[str, Any] = dict(model_name="m", model_hash=MODEL, node_version="0.1.0", issued_at=NOW - 60,
                                expires_at=NOW + 3600, tee_kind=TEE_SNP)
    base.update(kw)
    return Claims.for_key(NODE_RAW, **base)


def snp_envelope(c: Claims, *edits: tuple[int, bytes], vcek: bytes = TEST_VCEK, crl: bytes | None = None) -> bytes:
    """The real report bound to ``c`` (plus ``edits``), re-signed by the test VCEK, in a signed cocoon report
    that ships the test ARK's CRL (``crl``, default: one revoking nothing) as a worker does."""
    raw = patch(RAW, REPORT_DATA_AT, c.report_data())
    for off, value in edits:
        raw = patch(raw, off, value)
    shipped = encode_snp_collateral(make_crl(PKI) if crl is None else crl) if crl != b"" else b""
    return sign_report(c, encode_snp_evidence(resign(raw, KEY), vcek), NODE, collateral=shipped)


POLICY = Policy(tee_kinds=frozenset({TEE_SNP}), image_hashes=frozenset({snp_image_hash(REP)}),
                model_hashes=frozenset({MODEL}), snp=SnpPolicy(measurements=frozenset({MEAS})))


def refused(check: str, env: bytes, policy: Policy = POLICY, now: int = NOW, peer: bytes | None = None) -> str:
    peer = claims().peer_id if peer is None else peer
    with pytest.raises(AttestationError) as ei:
        verify_report(env, peer, policy, now)
    assert ei.value.check == check, str(ei.value)
    v = check_report(env, peer, policy, now)
    assert not v.ok and v.check == check
    return str(ei.value)


@pytest.fixture
def test_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust the test AMD PKI instead of AMD's (test only)."""
    monkeypatch.setattr(snp_mod, "AMD_SNP_ROOTS", PKI.roots)


def test_real_milan_report_passes_every_link_but_the_claims_binding() -> None:
    """Pinned AMD roots, the real report and VCEK: chain, signature, chip id and TCB hold; REPORT_DATA is not ours."""
    c = claims()
    env = sign_report(c, encode_snp_evidence(RAW, real_vcek()), NODE)
    msg = refused("report_data", env, replace(POLICY, snp=SnpPolicy(measurements=ANY)))
    assert REP.report_data.hex() in msg and c.report_data().hex() in msg


@pytest.mark.parametrize("offset", [0x00, 0x08, 0x30, 0x38, 0x50, 0x90, 0xC0, 0x1A0, 0x180, 0x29F])
def test_tampered_real_report_is_refused(offset: int) -> None:
    """A flipped byte of the signed part (version, policy, VMPL, TCB, REPORT_DATA, MEASUREMENT, HOST_DATA,
    CHIP_ID, ...) never passes: the VCEK's signature (or the parser, for the version) refuses it."""
    b = bytearray(RAW)
    b[offset] ^= 0x01
    env = sign_report(claims(), encode_snp_evidence(bytes(b), real_vcek()), NODE)
    v = check_report(env, claims().peer_id, replace(POLICY, snp=SnpPolicy(measurements=ANY)), NOW)
    assert not v.ok and v.check in ("report_signature", "format"), (offset, v)


def test_other_chips_vcek_is_refused(test_roots: None) -> None:
    c = claims()
    # a genuine VCEK of another chip (a real Turin one): not the key that signed, and another product
    assert not check_report(sign_report(c, encode_snp_evidence(RAW, real_turin_vcek()), NODE), c.peer_id,
                            POLICY, NOW).ok
    # a VCEK of the same PKI for another chip id, signing honestly: its hwID is not this report's CHIP_ID
    other_key = fixed_p384("other-chip")
    other = make_vcek(PKI, other_key, hw_id=bytes(64 - 1) + b"\x01", tcb=REAL_TCB)
    raw = patch(RAW, REPORT_DATA_AT, c.report_data())
    env = sign_report(c, encode_snp_evidence(resign(raw, other_key), other), NODE)
    refused("vcek_chip_id", env)


def test_bound_report_verifies_and_names_its_measurement(test_roots: None) -> None:
    c = claims()
    v = verify_report(snp_envelope(c), c.peer_id, POLICY, NOW)
    assert v.ok and v.tee_kind == TEE_SNP and v.measurement == MEAS.hex()
    assert v.image_hash == snp_image_hash(REP).hex() and v.mrtd is None
    assert v.tcb_checked is False and any("no minimum TCB for Milan" in r for r in v.reasons)
    floor = replace(POLICY, snp=replace(POLICY.snp, min_tcb={"Milan": REAL_TCB}))
    v2 = verify_report(snp_envelope(c), c.peer_id, floor, NOW)
    assert v2.tcb_checked and v2.tcb_status and "meets minimum" in v2.tcb_status


def test_policy_measurement_debug_vmpl_tcb(test_roots: None) -> None:
    c = claims()
    env = snp_envelope(c)
    refused("measurement", env, replace(POLICY, snp=SnpPolicy()))  # empty default accepts nothing
    refused("tee_kind", env, replace(POLICY, tee_kinds=frozenset({TEE_TDX, TEE_DEV})))
    refused("image_hash", env, replace(POLICY, image_hashes=frozenset({bytes(32)})))
    refused("model_hash", env, replace(POLICY, model_hashes=frozenset({bytes(32)})))
    # guest policy with DEBUG (bit 19) set: the image hash covers the policy, so allow it to reach the debug check
    debug_policy = (REP.policy | 1 << 19).to_bytes(8, "little")
    env_dbg = snp_envelope(c, (0x08, debug_policy))
    any_image = replace(POLICY, image_hashes=ANY)
    refused("debug", env_dbg, any_image)
    refused("vmpl", snp_envelope(c, (0x30, (1).to_bytes(4, "little"))), any_image)
    higher = TcbVersion(boot_loader=3, tee=0, snp=9, microcode=115)
    refused("tcb_minimum", env, replace(POLICY, snp=replace(POLICY.snp, min_tcb={"Milan": higher})))
    refused("tcb", env, replace(POLICY, require_tcb_check=True))
    ok = replace(POLICY, require_tcb_check=True, snp=replace(POLICY.snp, min_tcb={"Milan": REAL_TCB}))
    assert verify_report(env, c.peer_id, ok, NOW).ok


def test_expiry_is_enforced_though_the_report_has_no_time(test_roots: None) -> None:
    """The SNP report carries no time; the claims' window, bound through REPORT_DATA, is enforced."""
    c = claims(issued_at=NOW - 7200, expires_at=NOW - 3600)
    refused("expired", snp_envelope(c), now=NOW)
    refused("too_old", snp_envelope(claims(issued_at=NOW - 90_000, expires_at=NOW + 60)))
    # and the evidence of a fresh report cannot be moved into one with a later expiry
    fresh = claims()
    later = claims(expires_at=NOW + 7200)
    record_evidence = _evidence_of(snp_envelope(fresh))
    refused("report_data", sign_report(later, record_evidence, NODE))


def _evidence_of(env: bytes) -> bytes:
    from cocoon_node.attestation import decode_and_verify_envelope

    return decode_and_verify_envelope(env).evidence


def test_snp_evidence_format_is_strict(test_roots: None) -> None:
    c = claims()
    for evidence in (real_quote_bytes(), b"", b"\xa0", encode_snp_evidence(RAW, TEST_VCEK)[:-1]):
        refused("format", sign_report(c, evidence, NODE))
    with pytest.raises(AttestationError) as ei:
        decode_snp_evidence(encode_snp_evidence(RAW, b""))
    assert ei.value.check == "format"
    refused("vcek_format", sign_report(c, encode_snp_evidence(RAW, b"not a certificate"), NODE))
    with pytest.raises(ValueError):
        encode_snp_evidence(RAW[:-1], TEST_VCEK)


class PspGuest(FakeSevGuest):
    """configfs-tsm on SEV-SNP whose 'PSP' signs the real report over the caller's REPORT_DATA (test VCEK)."""

    def _write(self, path: Path, data: bytes) -> None:
        super()._write(path, data)
        (path.parent / "outblob").write_bytes(resign(patch(RAW, REPORT_DATA_AT, data), KEY))


def test_worker_publishes_an_snp_report_the_gate_accepts(tmp_path: Path, test_roots: None,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    kp = _key_pair()
    tsm_dir = tmp_path / "tsm"
    tsm_dir.mkdir()
    guest = PspGuest(tsm_dir, RAW, SnpCertTable(vcek=TEST_VCEK).to_bytes())
    pub = ReportPublisher(None, kp, tee=TEE_SNP, model_name="m", model_hash=MODEL,  # type: ignore[arg-type]
                          data_dir=tmp_path, tsm=guest)
    env = pub.make_report(now=NOW)
    peer = claims().peer_id
    with caplog.at_level(logging.WARNING):
        v = verify_report(env, peer, POLICY, NOW)
    assert v.ok and v.tee_kind == TEE_SNP and not any("dev-INSECURE" in r.message for r in caplog.records)
    assert len(guest.inblobs) == 1
    # no VCEK in the host's table: the operator's VCEK file is used, and without one a clear error
    bare = PspGuest(tsm_dir, RAW, b"")
    with pytest.raises(Exception, match="snp_vcek_file"):
        ReportPublisher(None, kp, tee=TEE_SNP, model_name="m", model_hash=MODEL,  # type: ignore[arg-type]
                        data_dir=tmp_path, tsm=bare).make_report(now=NOW)
    (tmp_path / "vcek.der").write_bytes(TEST_VCEK)
    env2 = ReportPublisher(None, kp, tee=TEE_SNP, model_name="m", model_hash=MODEL,  # type: ignore[arg-type]
                           data_dir=tmp_path, tsm=bare, snp_vcek_file=tmp_path / "vcek.der").make_report(now=NOW)
    assert verify_report(env2, peer, POLICY, NOW).ok


def _key_pair() -> KeyPair:
    key = Libp2pEd25519Key.from_bytes(NODE.private_bytes_raw())
    return KeyPair(key, key.get_public_key())


TESTNET = {"node": {"network": "testnet"}, "payments": {"chain": "ton", "ton_network": "testnet"}}


def test_policy_from_config_accepts_snp_only_when_asked(test_roots: None) -> None:
    from cocoon_node.config import ConfigError, load_config
    from cocoon_node.node.attest_policy import policy_from_config

    settings = {"allowed_image_hashes": [snp_image_hash(REP).hex()], "allowed_models": [f"m={MODEL.hex()}"]}
    c = claims()
    env = snp_envelope(c)
    plain = policy_from_config(load_config(env={}, overrides={**TESTNET, "policy": settings}))
    refused("tee_kind", env, plain)  # SNP workers are not accepted by default
    snp_on = {**settings, "allow_snp": True, "allowed_snp_measurements": [MEAS.hex()],
              "snp_min_tcb": ["Milan=3:0:8:115"], "require_tcb_check": True}
    policy = policy_from_config(load_config(env={}, overrides={**TESTNET, "policy": snp_on}))
    assert verify_report(env, c.peer_id, policy, NOW).ok

    def with_(**kw: Any) -> Policy:
        return policy_from_config(load_config(env={}, overrides={**TESTNET, "policy": {**snp_on, **kw}}))

    refused("tcb_minimum", env, with_(snp_min_tcb=["Milan=3:0:9:115"]))
    refused("vmpl", env, with_(snp_vmpls=["1"]))
    for bad, setting in ((["any"], "allowed_snp_measurements"), (["Rome=1:2:3:4"], "snp_min_tcb"),
                         (["Milan=1:2:3"], "snp_min_tcb"), (["4"], "snp_vmpls"), (["ab"], "allowed_snp_measurements")):
        with pytest.raises(ConfigError) as ei:
            load_config(env={}, overrides={**TESTNET, "policy": {**snp_on, setting: bad}})
        assert any(f"policy.{setting}" in p for p in ei.value.problems), ei.value.problems
    snp_worker = {"enabled": True, "tee": "snp", "backend": "synthetic"}
    assert load_config(env={}, overrides={**TESTNET, "worker": snp_worker}).worker.tee == "snp"


def test_measure_prints_what_approves_an_snp_image(test_roots: None) -> None:
    """`python -m cocoon_node.attestation.measure REPORT` on an SNP report: the [policy] lines it prints approve it."""
    import tomllib

    from cocoon_node.attestation.measure import measurements_of_report, policy_lines
    from cocoon_node.config import load_config
    from cocoon_node.node.attest_policy import policy_from_config

    c = claims()
    env = snp_envelope(c)
    m = measurements_of_report(env)
    assert m is not None and m["snp_measurement"] == MEAS.hex() and m["image_hash"] == snp_image_hash(REP).hex()
    settings = tomllib.loads("\n".join(policy_lines(m)))
    policy = policy_from_config(load_config(env={}, overrides={**TESTNET, "policy": settings}))
    assert verify_report(env, c.peer_id, policy, NOW).ok


async def test_the_requesters_gate_accepts_an_snp_worker_and_refuses_a_tampered_one(test_roots: None) -> None:
    """The AttestationGate (DHT lookup, verdict, announcement binding) on SNP reports."""
    from libp2p.peer.id import ID

    from cocoon_node.mesh import Announcement
    from cocoon_node.node.attest import AttestationGate, report_key
    from tests.node.gate_helpers import FakeDht

    c = claims()
    announcement = Announcement(peer_id=c.peer_id, addrs=(), model="m", model_hash=MODEL, backend="",
                                synthetic=False, price_prompt=1, price_completion=1, max_concurrent=1, load=0,
                                protocols=("/cocoon/inference/1.0.0",), tee_kind=TEE_SNP, seqno=1,
                                issued_at=NOW, expires_at=NOW + 15, payout="", v=1)

    def gate(record: bytes) -> AttestationGate:
        dht = FakeDht()
        dht.records[report_key(ID(c.peer_id))] = record
        return AttestationGate(dht, POLICY, clock=lambda: float(NOW))  # type: ignore[arg-type]

    good = gate(snp_envelope(c))
    assert await good.is_attested(announcement)
    assert good.describe(announcement)["tee_kind"] == TEE_SNP
    # the same report with one byte of its SNP report flipped (the worker's envelope re-signed: only the
    # VCEK's signature can tell)
    signed = bytearray(resign(patch(RAW, REPORT_DATA_AT, c.report_data()), KEY))
    signed[0x90] ^= 1  # MEASUREMENT, after the VCEK signed it
    tampered = sign_report(c, encode_snp_evidence(bytes(signed), TEST_VCEK), NODE)
    bad = gate(tampered)
    assert not await bad.is_attested(announcement)
    assert bad.verdict(c.peer_id) is not None and bad.verdict(c.peer_id).check == "report_signature"  # type: ignore[union-attr]
