"""SEV-SNP policy checks, signing-key selection, malformed certificates and the pinned AMD roots.

Policy cases change a signed field, so the report is re-signed by a VCEK of the test PKI (snp_helpers)
for the real chip and TCB, and verified under the test roots; the pinned-root cases use real evidence.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from cryptography import x509

from cocoon_node.attestation import ANY, AttestationError, SnpPolicy, TcbVersion, parse_snp_report, verify_snp_report
from cocoon_node.attestation import _snp_chain as chain_mod
from cocoon_node.attestation import _snp_roots as roots_mod
from cocoon_node.attestation import snp as snp_mod

from .snp_helpers import (
    MILAN_DIR,
    NOW,
    amd_name,
    fixed_p384,
    make_pki,
    make_vcek,
    patch,
    real_report,
    real_vcek,
    sign_report,
    u32,
    u64,
)

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

RAW = real_report()
VCEK = real_vcek()
REP = parse_snp_report(RAW)
RD = REP.report_data
MEAS = REP.measurement
REAL_TCB = TcbVersion(boot_loader=3, tee=0, snp=8, microcode=115)
PKI = make_pki("policy")
KEY = fixed_p384("policy-vcek")
TEST_VCEK = make_vcek(PKI, KEY, hw_id=REP.chip_id, tcb=REAL_TCB)
ONLY_REAL = SnpPolicy(measurements=frozenset({MEAS}))


def check(report: bytes, policy: SnpPolicy = ONLY_REAL, vcek: bytes = TEST_VCEK) -> snp_mod.SnpVerification:
    return snp_mod._verify(report, vcek, expected_report_data=RD, policy=policy, now=NOW, ask=None, roots=PKI.roots)


def refused(check_name: str, report: bytes, policy: SnpPolicy = ONLY_REAL, vcek: bytes = TEST_VCEK) -> str:
    with pytest.raises(AttestationError) as ei:
        check(report, policy, vcek)
    assert ei.value.check == check_name, str(ei.value)
    return ei.value.message


def resigned(*edits: tuple[int, bytes]) -> bytes:
    out = RAW
    for off, value in edits:
        out = patch(out, off, value)
    return sign_report(out, KEY)


def test_baseline_passes_under_test_pki() -> None:
    assert check(resigned()).measurement == MEAS


def test_measurement_allow_list() -> None:
    refused("measurement", resigned(), SnpPolicy())  # the empty default accepts nothing
    refused("measurement", resigned(), SnpPolicy(measurements=frozenset({bytes(48)})))
    other = hashlib.sha384(b"other image").digest()
    msg = refused("measurement", resigned((0x90, other)))
    assert other.hex() in msg
    assert check(resigned((0x90, other)), SnpPolicy(measurements=frozenset({MEAS, other}))).measurement == other
    assert check(resigned((0x90, other)), SnpPolicy(measurements=ANY))
    # And against the real report under the pinned roots.
    with pytest.raises(AttestationError) as ei:
        verify_snp_report(RAW, VCEK, expected_report_data=RD, policy=SnpPolicy(), now=NOW)
    assert ei.value.check == "measurement"


def test_debug_policy_bit_refused() -> None:
    debug = resigned((0x08, u64(REP.policy | 1 << 19)))
    assert parse_snp_report(debug).debug
    refused("debug", debug)
    assert check(debug, SnpPolicy(measurements=frozenset({MEAS}), allow_debug=True))


def test_migration_agent_bit_refused() -> None:
    ma = resigned((0x08, u64(REP.policy | 1 << 18)))
    refused("migration_agent", ma)
    assert check(ma, SnpPolicy(measurements=frozenset({MEAS}), allow_migration_agent=True))


def test_vmpl_allow_list() -> None:
    vmpl2 = resigned((0x30, u32(2)))
    assert "VMPL 2" in refused("vmpl", vmpl2)
    assert check(vmpl2, SnpPolicy(measurements=frozenset({MEAS}), vmpls=frozenset({0, 2}))).report.vmpl == 2
    refused("vmpl", resigned(), SnpPolicy(measurements=frozenset({MEAS}), vmpls=frozenset({1})))
    with pytest.raises(AttestationError) as ei:  # the real report, pinned roots
        verify_snp_report(
            RAW, VCEK, expected_report_data=RD, policy=SnpPolicy(measurements=ANY, vmpls=frozenset({3})), now=NOW
        )
    assert ei.value.check == "vmpl"


@pytest.mark.parametrize(
    "floor",
    [TcbVersion(4, 0, 8, 115), TcbVersion(3, 1, 8, 115), TcbVersion(3, 0, 9, 115), TcbVersion(3, 0, 8, 116)],
)
def test_tcb_minimum_each_component(floor: TcbVersion) -> None:
    policy = SnpPolicy(measurements=ANY, min_tcb={"Milan": floor})
    with pytest.raises(AttestationError) as ei:
        verify_snp_report(RAW, VCEK, expected_report_data=RD, policy=policy, now=NOW)
    assert ei.value.check == "tcb_minimum", str(ei.value)


def test_tcb_minimum_met_and_per_product() -> None:
    for floor in (REAL_TCB, TcbVersion(0, 0, 0, 0), TcbVersion(3, 0, 8, 100)):
        policy = SnpPolicy(measurements=ANY, min_tcb={"Milan": floor})
        assert verify_snp_report(RAW, VCEK, expected_report_data=RD, policy=policy, now=NOW).product == "Milan"
    # A Turin floor says nothing about a Milan chip (SPL numbers differ per product).
    policy = SnpPolicy(measurements=ANY, min_tcb={"Turin": TcbVersion(99, 99, 99, 99, 99)})
    assert verify_snp_report(RAW, VCEK, expected_report_data=RD, policy=policy, now=NOW).product == "Milan"


def test_product_allow_list() -> None:
    policy = SnpPolicy(measurements=ANY, products=frozenset({"Genoa", "Turin"}))
    with pytest.raises(AttestationError) as ei:
        verify_snp_report(RAW, VCEK, expected_report_data=RD, policy=policy, now=NOW)
    assert ei.value.check == "product"
    # v3 CPUID fields naming Genoa while the chain ends at the Milan ARK; Milan's own CPUID passes.
    genoa = resigned((0, u32(3)), (0x188, bytes([0x19, 0x11, 0x01])))
    assert "Genoa" in refused("product", genoa)
    assert check(resigned((0, u32(3)), (0x188, bytes([0x19, 0x01, 0x01])))).product == "Milan"


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="unknown"):
        SnpPolicy(products=frozenset({"Naples"}))
    with pytest.raises(ValueError, match="unknown"):
        SnpPolicy(min_tcb={"Rome": TcbVersion(0, 0, 0, 0)})
    with pytest.raises(ValueError, match="48 bytes"):
        SnpPolicy(measurements=frozenset({bytes(32)}))
    floors = {"Milan": REAL_TCB}
    p = SnpPolicy(min_tcb=floors)
    floors["Milan"] = TcbVersion(99, 99, 99, 99)  # the caller's dict changing later changes nothing
    assert p.min_tcb["Milan"] == REAL_TCB and hash(p) == hash(SnpPolicy())
    with pytest.raises(TypeError):
        p.min_tcb["Genoa"] = REAL_TCB  # type: ignore[index]


# --- signing key: VCEK, VLEK, none ----------------------------------------------------------------------


def test_signature_algo_and_unsigned_reports() -> None:
    assert "ECDSA" in refused("signature_algo", resigned((0x34, u32(2))))
    refused("signing_key", resigned((0x48, u32(7 << 2))))  # SIGNING_KEY = none
    refused("signing_key", resigned((0x48, u32(0x2))))  # MASK_CHIP_KEY: signature is zero
    refused("signing_key", resigned((0x48, u32(3 << 2))))  # reserved selector


def test_vlek_needs_policy_and_a_vlek_certificate() -> None:
    asvk_pki = make_pki("policy-vlek", ask_cn="SEV-VLEK-Milan")
    vlek_key = fixed_p384("vlek")
    vlek = make_vcek(asvk_pki, vlek_key, hw_id=None, tcb=REAL_TCB, csp_id="test-cloud", cn="SEV-VLEK")
    report = sign_report(patch(RAW, 0x48, u32(1 << 2)), vlek_key)

    def run(policy: SnpPolicy, cert: bytes = vlek) -> snp_mod.SnpVerification:
        return snp_mod._verify(
            report, cert, expected_report_data=RD, policy=policy, now=NOW, ask=asvk_pki.ask_pem(), roots=asvk_pki.roots
        )

    with pytest.raises(AttestationError) as ei:
        run(ONLY_REAL)
    assert ei.value.check == "signing_key" and "VLEK" in ei.value.message
    res = run(SnpPolicy(measurements=frozenset({MEAS}), allow_vlek=True))
    assert (res.signing_key, res.vcek.csp_id, res.vcek.hw_id) == ("VLEK", "test-cloud", None)
    # A report claiming a VLEK signature with a VCEK certificate, and the other way round.
    vcek_for_vlek_key = make_vcek(asvk_pki, vlek_key, hw_id=REP.chip_id, tcb=REAL_TCB)
    with pytest.raises(AttestationError) as ei:
        run(SnpPolicy(measurements=frozenset({MEAS}), allow_vlek=True), vcek_for_vlek_key)
    assert ei.value.check == "signing_key"
    refused(
        "signing_key",
        sign_report(RAW, vlek_key),
        ONLY_REAL,
        make_vcek(PKI, vlek_key, hw_id=None, tcb=REAL_TCB, csp_id="x"),
    )


# --- malformed certificates -------------------------------------------------------------------------------


def _vcek_refused(check_name: str, vcek: object, ask: object = None) -> str:
    with pytest.raises(AttestationError) as ei:
        snp_mod._verify(
            sign_report(RAW, KEY), vcek, expected_report_data=RD, policy=ONLY_REAL, now=NOW, ask=ask, roots=PKI.roots
        )  # type: ignore[arg-type]
    assert ei.value.check == check_name, str(ei.value)
    return ei.value.message


def test_garbled_vcek_and_ask() -> None:
    for bad in (b"", b"\x30\x03\x02\x01", VCEK[:500], b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"):
        _vcek_refused("vcek_format", bad)
    _vcek_refused("vcek_format", "not bytes")
    _vcek_refused("ask_format", TEST_VCEK, b"garbage")
    # A VCEK whose key is not P-384, and one missing its TCB extensions or hwID.
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = ec.derive_private_key(7, ec.SECP256R1())
    assert "P-384" in _vcek_refused("vcek_format", make_vcek(PKI, p256, hw_id=REP.chip_id, tcb=REAL_TCB))  # type: ignore[arg-type]
    assert "hwID" in _vcek_refused("vcek_format", make_vcek(PKI, KEY, hw_id=REP.chip_id[:8], tcb=REAL_TCB))
    assert "exactly one" in _vcek_refused("vcek_format", make_vcek(PKI, KEY, hw_id=None, tcb=REAL_TCB))


def test_chain_structure_is_checked() -> None:
    """Each link: the issuer name, the CA flags, and the root's own self-signature."""
    forged = sign_report(RAW, KEY)
    # Signed by the ASK's key but naming another issuer.
    renamed = make_vcek(PKI, KEY, hw_id=REP.chip_id, tcb=REAL_TCB, issuer=amd_name("SEV-Other"))
    assert "issuer" in _vcek_refused("cert_chain", renamed, PKI.ask_pem())
    # A VCEK that is a CA, and an ASK that is not.
    ca_vcek = make_vcek(PKI, KEY, hw_id=REP.chip_id, tcb=REAL_TCB, is_ca=True)
    assert "must not be a CA" in _vcek_refused("cert_chain", ca_vcek)
    not_ca = make_pki("policy-not-ca", ask_is_ca=False)
    vcek = make_vcek(not_ca, KEY, hw_id=REP.chip_id, tcb=REAL_TCB)
    with pytest.raises(AttestationError) as ei:
        snp_mod._verify(forged, vcek, expected_report_data=RD, policy=ONLY_REAL, now=NOW, ask=None, roots=not_ca.roots)
    assert ei.value.check == "cert_chain" and "ASK is not a CA" in ei.value.message
    # A root that is not self-signed.
    odd_root = make_pki("policy-odd-root", ark_signer=make_pki("policy-other").ark_key)
    vcek = make_vcek(odd_root, KEY, hw_id=REP.chip_id, tcb=REAL_TCB)
    with pytest.raises(AttestationError) as ei:
        snp_mod._verify(
            forged, vcek, expected_report_data=RD, policy=ONLY_REAL, now=NOW, ask=None, roots=odd_root.roots
        )
    assert ei.value.check == "cert_chain" and "self-signature" in ei.value.message


@pytest.mark.parametrize(
    "raw", [b"", b"\x02", b"\x04\x01\x03", b"\x02\x02\x00\x03", b"\x02\x01\x80", b"\x02\x03\x00\x01\x00"]
)
def test_malformed_spl_extension(raw: bytes) -> None:
    vcek = make_vcek(PKI, KEY, hw_id=REP.chip_id, tcb=REAL_TCB, raw_spl={chain_mod.OID_UCODE_SPL: raw})
    assert "TCB extension" in _vcek_refused("vcek_format", vcek)


def test_spl_above_127_is_read_as_der() -> None:
    tcb = TcbVersion(3, 0, 8, 200)
    report = sign_report(patch(RAW, 0x180, bytes([3, 0, 0, 0, 0, 0, 8, 200])), KEY)
    vcek = make_vcek(PKI, KEY, hw_id=REP.chip_id, tcb=tcb)
    res = snp_mod._verify(report, vcek, expected_report_data=RD, policy=ONLY_REAL, now=NOW, ask=None, roots=PKI.roots)
    assert res.reported_tcb == tcb


def test_a_future_cryptography_refusing_serial_zero_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(data: bytes) -> x509.Certificate:
        raise ValueError("error parsing asn1 value: serial number must be positive")

    monkeypatch.setattr(chain_mod.x509, "load_der_x509_certificate", refuse)
    with pytest.raises(AttestationError) as ei:
        verify_snp_report(RAW, VCEK, expected_report_data=RD, policy=ONLY_REAL, now=NOW)
    assert ei.value.check == "vcek_format"
    assert "serial number 0" in ei.value.message and "refuses" in ei.value.message


def test_warnings_as_errors_still_load_the_vcek() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify_snp_report(RAW, VCEK, expected_report_data=RD, policy=ONLY_REAL, now=NOW).product == "Milan"


def test_no_serial_warning_in_a_plain_process() -> None:
    """In a normal process the library's own filter keeps AMD's serial-0 VCEK from warning on every load."""
    root = Path(__file__).resolve().parents[2]
    code = (
        "import warnings\n"
        "from cocoon_node.attestation import ANY, SnpPolicy, parse_snp_report, verify_snp_report\n"
        "from datetime import datetime, UTC\n"
        f"raw = open({str(MILAN_DIR / 'report-milan.bin')!r}, 'rb').read()\n"
        f"vcek = open({str(MILAN_DIR / 'vcek-milan.der')!r}, 'rb').read()\n"
        "rd = parse_snp_report(raw).report_data\n"
        "for _ in range(3):\n"
        "    verify_snp_report(raw, vcek, expected_report_data=rd, policy=SnpPolicy(measurements=ANY),"
        " now=datetime(2026, 1, 1, tzinfo=UTC))\n"
        "print('verified')\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "verified"
    assert "serial number" not in out.stderr, out.stderr


# --- the pinned roots ---------------------------------------------------------------------------------


def test_pinned_milan_equals_the_steering_repos_copy() -> None:
    assert (MILAN_DIR / "ark-milan.pem").read_bytes() == snp_mod.AMD_ARK_MILAN_PEM
    assert (MILAN_DIR / "ask-milan.pem").read_bytes() == snp_mod.AMD_ASK_MILAN_PEM


def test_pinned_pem_hashes_match_their_comments() -> None:
    source = Path(roots_mod.__file__).read_text()
    blocks = re.findall(
        r"SHA-256 of the PEM file ([0-9a-f]{64})\n#: SHA-256 of the DER ([0-9a-f]{64})\n(\w+) = ", source
    )
    assert len(blocks) == 6
    from cryptography.hazmat.primitives.serialization import Encoding

    for pem_sha, der_sha, name in blocks:
        pem = getattr(roots_mod, name)
        assert hashlib.sha256(pem).hexdigest() == pem_sha, name
        der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
        assert hashlib.sha256(der).hexdigest() == der_sha, name


@pytest.mark.parametrize("product", ["Milan", "Genoa", "Turin"])
def test_each_pinned_ark_is_self_signed_and_signs_its_ask(product: str) -> None:
    root = chain_mod.AMD_SNP_ROOTS[product]
    assert f"CN=ARK-{product}" in root.ark.subject.rfc4514_string()
    assert f"CN=SEV-{product}" in root.ask.subject.rfc4514_string()
    chain_mod._check_link(root.ark, root.ark, "ARK")
    chain_mod._check_link(root.ask, root.ark, "ASK")
    others = [r for p, r in chain_mod.AMD_SNP_ROOTS.items() if p != product]
    for other in others:
        with pytest.raises(AttestationError):
            chain_mod._check_link(root.ask, other.ark, "cross")
