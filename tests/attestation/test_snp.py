"""AMD SEV-SNP: the real Milan report parses and verifies to the pinned ARK; every tampering is refused.

Real evidence (tests/data/sev-snp-milan, provenance in tests/data/README.md) for the positive path and
byte flips; a test AMD PKI (snp_helpers) where a case needs a chain we can sign: another chip's VCEK,
a VCEK at another TCB, a report with changed policy fields re-signed by a VCEK we hold.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from cocoon_node.attestation import (
    ANY,
    AttestationError,
    QuoteFormatError,
    SnpPolicy,
    SnpVerification,
    TcbVersion,
    parse_snp_report,
    verify_snp_report,
)
from cocoon_node.attestation import snp as snp_mod

from .snp_helpers import (
    NOW,
    fixed_p384,
    make_pki,
    make_vcek,
    patch,
    real_report,
    real_turin_vcek,
    real_vcek,
    sign_report,
    u32,
    u64,
)

# AMD's VCEKs have serial number 0; cryptography warns on load. The library silences that for its own loads
# in a normal process (see test_no_serial_warning_in_a_plain_process); pytest's collection-time
# catch_warnings discards that filter, so the tests name it here.
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

RAW = real_report()
VCEK = real_vcek()
REP = parse_snp_report(RAW)
RD = REP.report_data
MEAS = REP.measurement
ANY_MEAS = SnpPolicy(measurements=ANY)
REAL_TCB = TcbVersion(boot_loader=3, tee=0, snp=8, microcode=115)

# Test PKI: a VCEK key we hold, certified for the real chip id and TCB, so re-signed reports verify.
PKI = make_pki()
KEY = fixed_p384("test-vcek")
TEST_VCEK = make_vcek(PKI, KEY, hw_id=REP.chip_id, tcb=REAL_TCB)


def verify(report: bytes, vcek: bytes = VCEK, *, rd: bytes = RD, policy: SnpPolicy = ANY_MEAS, **kw: object) -> object:
    return verify_snp_report(report, vcek, expected_report_data=rd, policy=policy, now=kw.pop("now", NOW), **kw)  # type: ignore[arg-type]


def verify_test_pki(
    report: bytes, vcek: bytes = TEST_VCEK, *, policy: SnpPolicy = ANY_MEAS, rd: bytes = RD
) -> SnpVerification:
    """Verify under the test PKI's roots (the production entry point pins AMD's)."""
    return snp_mod._verify(report, vcek, expected_report_data=rd, policy=policy, now=NOW, ask=None, roots=PKI.roots)


def expect(check: str, fn: object, *args: object, **kw: object) -> AttestationError:
    with pytest.raises(AttestationError) as ei:
        fn(*args, **kw)  # type: ignore[operator]
    assert ei.value.check == check, str(ei.value)
    return ei.value


def resigned(offset: int, value: bytes, base: bytes = RAW) -> bytes:
    return sign_report(patch(base, offset, value), KEY)


# --- parsing -------------------------------------------------------------------------------------------


def test_parse_real_report_fields() -> None:
    r = REP
    assert (r.version, r.guest_svn, r.policy, r.vmpl, r.signature_algo) == (2, 0, 0x30000, 0, 1)
    assert not r.debug and not r.migrate_ma and r.signing_key == 0 and not r.mask_chip_key
    assert r.measurement.hex() == (
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    )
    assert r.chip_id.hex().startswith("d49554ec717f4e5b") and len(r.chip_id) == 64
    assert r.report_id_ma == b"\xff" * 32 and r.host_data == bytes(32)
    for f in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        assert r.tcb(f, "Milan") == REAL_TCB
    assert (r.current_major, r.current_minor, r.current_build) == (1, 52, 4)
    assert (r.committed_major, r.committed_minor, r.committed_build) == (1, 52, 4)
    assert r.cpuid_fam_id is None and r.cpuid_product is None  # v2 has no CPUID fields
    assert r.launch_mit_vector is None and r.current_mit_vector is None
    assert r.signature_r.bit_length() <= 384 and r.signature_s.bit_length() <= 384
    assert r.signed_bytes == RAW[:0x2A0] and r.raw == RAW


def test_tcb_layouts_per_product() -> None:
    raw = bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert TcbVersion.decode(raw, "Milan") == TcbVersion(boot_loader=1, tee=2, snp=7, microcode=8)
    assert TcbVersion.decode(raw, "Genoa") == TcbVersion(boot_loader=1, tee=2, snp=7, microcode=8)
    assert TcbVersion.decode(raw, "Turin") == TcbVersion(fmc=1, boot_loader=2, tee=3, snp=4, microcode=8)
    with pytest.raises(QuoteFormatError):
        TcbVersion.decode(raw, "Naples")
    assert REAL_TCB.meets(REAL_TCB) and not REAL_TCB.meets(TcbVersion(3, 0, 9, 115))


def test_v3_and_v5_fields() -> None:
    v5 = patch(patch(patch(patch(RAW, 0, u32(5)), 0x188, bytes([0x19, 0x01, 0x01])), 0x1F8, u64(7)), 0x200, u64(9))
    r = parse_snp_report(v5)
    assert (r.version, r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step, r.cpuid_product) == (5, 0x19, 1, 1, "Milan")
    assert (r.launch_mit_vector, r.current_mit_vector) == (7, 9)
    assert parse_snp_report(patch(RAW, 0x188, bytes([0x19, 0x11]))).cpuid_product is None  # v2 ignores them
    assert parse_snp_report(patch(patch(RAW, 0, u32(3)), 0x188, bytes([0x1A, 0x02]))).cpuid_product == "Turin"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "0 bytes"),
        (RAW[:0x2A0], "672 bytes"),
        (RAW[:-1], "1183 bytes"),
        (RAW + b"\x00", "1185 bytes"),
        (RAW * 2, "2368 bytes"),
        (patch(RAW, 0, u32(1)), "version 1"),
        (patch(RAW, 0, u32(6)), "version 6"),
        (patch(RAW, 0, u32(0xFFFFFFFF)), "version"),
        (patch(RAW, 0x2A0 + 48, b"\x01"), "beyond the 48"),
        (patch(RAW, 0x2E8 + 71, b"\x01"), "beyond the 48"),
        (patch(RAW, 0x330, b"\x01"), "reserved, unsigned tail"),
        (patch(RAW, 0x49F, b"\x80"), "reserved, unsigned tail"),
    ],
)
def test_malformed_reports_give_format_errors(data: bytes, match: str) -> None:
    with pytest.raises(QuoteFormatError, match=match) as ei:
        verify(data)
    assert ei.value.check == "format"


@pytest.mark.parametrize("data", [None, "a string", 1184, [0] * 1184])
def test_non_bytes_report(data: object) -> None:
    with pytest.raises(QuoteFormatError, match="must be bytes"):
        parse_snp_report(data)  # type: ignore[arg-type]


def test_truncation_at_every_length_is_a_format_error() -> None:
    for n in range(len(RAW)):
        with pytest.raises(QuoteFormatError):
            parse_snp_report(RAW[:n])


def test_garbage_never_escapes_as_another_exception() -> None:
    """Random reports and random certificates: only AttestationError, never an unhandled exception."""
    import random

    rng = random.Random(16)
    for i in range(300):
        if i % 3 == 0:
            data = rng.randbytes(rng.choice([0, 1, 100, 1184, 1185, 4000]))
        else:  # a plausible header and noise elsewhere, so the later checks run too
            data = bytearray(RAW)
            for _ in range(rng.randint(1, 40)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        vcek = (
            VCEK if i % 2 else rng.choice([b"", rng.randbytes(50), VCEK[: rng.randrange(len(VCEK))], b"-----BEGIN x"])
        )
        with pytest.raises(AttestationError):
            verify(bytes(data), vcek)


# --- the real report, the pinned roots ----------------------------------------------------------------


def test_real_report_verifies_to_pinned_milan_ark() -> None:
    res = verify_snp_report(
        RAW, VCEK, expected_report_data=RD, policy=SnpPolicy(measurements=frozenset({MEAS})), now=NOW
    )
    assert isinstance(res, SnpVerification)
    assert (res.product, res.signing_key, res.reported_tcb) == ("Milan", "VCEK", REAL_TCB)
    assert res.measurement == MEAS and res.chip_id == REP.chip_id
    assert res.vcek.hw_id == REP.chip_id and res.vcek.product_name == "Milan-B0" and res.vcek.tcb == REAL_TCB
    # The same with the ASK passed explicitly (as a certificate table carries it), PEM or DER; VCEK as PEM.
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from .snp_helpers import MILAN_DIR

    ask_pem = (MILAN_DIR / "ask-milan.pem").read_bytes()
    ask_der = x509.load_pem_x509_certificate(ask_pem).public_bytes(Encoding.DER)
    for ask in (ask_pem, ask_der):
        assert verify(RAW, ask_pem=ask).product == "Milan"  # type: ignore[attr-defined]
    vcek_pem = snp_mod.verify_vcek_chain(VCEK, now=NOW).certificate.public_bytes(Encoding.PEM)
    assert verify(RAW, vcek_pem).product == "Milan"  # type: ignore[attr-defined]
    assert verify(RAW, now=int(NOW.timestamp())).product == "Milan"  # type: ignore[attr-defined]


def test_fields_of_a_parsed_report_cannot_disagree_with_its_signed_bytes() -> None:
    from dataclasses import replace

    lying = replace(REP, measurement=bytes(48), vmpl=0, policy=0)
    res = verify_snp_report(lying, VCEK, expected_report_data=RD, policy=ANY_MEAS, now=NOW)
    assert res.measurement == MEAS  # the signed value, not the edited field
    with pytest.raises(AttestationError) as ei:
        verify_snp_report(
            lying, VCEK, expected_report_data=RD, policy=SnpPolicy(measurements=frozenset({bytes(48)})), now=NOW
        )
    assert ei.value.check == "measurement"


def test_validity_windows() -> None:
    assert verify(RAW, now=datetime(2023, 4, 4, tzinfo=UTC))
    assert verify(RAW, now=datetime(2030, 4, 2, tzinfo=UTC))
    e = expect("cert_validity", verify, RAW, now=datetime(2023, 4, 2, tzinfo=UTC))
    assert "VCEK" in e.message
    expect("cert_validity", verify, RAW, now=datetime(2030, 4, 4, tzinfo=UTC))
    expect("cert_validity", verify, RAW, now=datetime(2019, 1, 1, tzinfo=UTC))  # before the ARK
    expect("cert_validity", verify, RAW, now=datetime(2031, 1, 1))  # naive datetimes are UTC


def _expected_check(offset: int, flipped: bytes) -> str:
    """Which check refuses ``flipped``: the signature, unless the flip broke a field read before it."""
    version = int.from_bytes(flipped[0:4], "little")
    if not 2 <= version <= 5:
        return "format"
    if 0x34 <= offset < 0x38:
        return "signature_algo"
    key_info = flipped[0x48]
    if offset == 0x48 and (key_info & 0x02 or (key_info >> 2) & 0x7 not in (0, 1)):
        return "signing_key"
    if offset == 0x48 and (key_info >> 2) & 0x7 == 1:
        return "signing_key"  # claims a VLEK; the policy takes VCEKs only
    return "report_signature"


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_signed_byte_is_rejected(mask: int) -> None:
    """Every one of the 672 signed bytes (0x000..0x29F), three flips each; the check that refuses is named."""
    seen: dict[str, int] = {}
    for off in range(0x2A0):
        b = bytearray(RAW)
        b[off] ^= mask
        flipped = bytes(b)
        with pytest.raises(AttestationError) as ei:
            verify(flipped)
        want = _expected_check(off, flipped)
        assert ei.value.check == want, (hex(off), str(ei.value))
        seen[want] = seen.get(want, 0) + 1
    assert seen["report_signature"] >= 0x2A0 - 9  # all but the version (4), algorithm (4) and key-info byte


def test_flipping_the_signature_is_rejected() -> None:
    for off in (*range(0x2A0, 0x2A0 + 48), *range(0x2E8, 0x2E8 + 48)):
        b = bytearray(RAW)
        b[off] ^= 0x01
        expect("report_signature", verify, bytes(b))


def test_report_data_binding() -> None:
    expect("report_data", verify, RAW, rd=bytes(64))
    expect("report_data", verify, RAW, rd=RD[:32])
    expect("report_data", verify, RAW, rd=RD + b"\x00")
    claims_digest = hashlib.sha512(b"canonical claims").digest()
    e = expect("report_data", verify, RAW, rd=claims_digest)
    assert claims_digest.hex() in e.message


def test_real_turin_vcek_is_not_this_chips_key() -> None:
    """A genuine VCEK of another chip (real Turin evidence) chains to AMD but did not sign this report."""
    expect("report_signature", verify, RAW, real_turin_vcek())


def test_real_turin_vcek_chains_to_pinned_turin_ark() -> None:
    leaf = snp_mod.verify_vcek_chain(real_turin_vcek(), now=NOW)
    assert (leaf.product, leaf.kind, leaf.product_name) == ("Turin", "VCEK", "Turin")
    assert leaf.hw_id is not None and len(leaf.hw_id) == 8
    assert leaf.tcb == TcbVersion(fmc=0, boot_loader=0, tee=0, snp=0, microcode=9)
    expect("cert_validity", snp_mod.verify_vcek_chain, real_turin_vcek(), now=datetime(2024, 11, 5, tzinfo=UTC))
    # The Milan ASK is not the Turin VCEK's issuer; the Turin ASK is not Milan's.
    expect("cert_chain", snp_mod.verify_vcek_chain, real_turin_vcek(), now=NOW, ask=snp_mod.AMD_ASK_MILAN_PEM)
    expect("cert_chain", verify, RAW, ask_pem=snp_mod.AMD_ASK_TURIN_PEM)


# --- test PKI: the chain logic's positive path, and keys AMD did not certify --------------------------


def test_test_pki_positive_path() -> None:
    """The real report re-signed by a VCEK of the test PKI verifies under the test roots only."""
    forged = sign_report(RAW, KEY)
    res = verify_test_pki(forged)
    assert (res.product, res.signing_key, res.reported_tcb) == ("Milan", "VCEK", REAL_TCB)
    res = snp_mod._verify(
        forged, TEST_VCEK, expected_report_data=RD, policy=ANY_MEAS, now=NOW, ask=PKI.ask_pem(), roots=PKI.roots
    )
    assert res.product == "Milan"
    # Under AMD's pinned roots the same forgery is refused: the names match AMD's, the signatures do not.
    expect("cert_chain", verify, forged, TEST_VCEK)
    expect("cert_chain", verify, forged, TEST_VCEK, ask_pem=PKI.ask_pem())


def test_vcek_not_chained_to_a_pinned_ark() -> None:
    other = make_pki("rogue", ark_cn="ARK-Rogue", ask_cn="SEV-Rogue")
    vcek = make_vcek(other, KEY, hw_id=REP.chip_id, tcb=REAL_TCB)
    forged = sign_report(RAW, KEY)
    e = expect("ark_root", verify, forged, vcek)
    assert "SEV-Rogue" in e.message
    expect("ark_root", verify, forged, vcek, ask_pem=other.ask_pem())
    # A rogue ASK claiming AMD's ARK as issuer: the ARK's signature on it does not verify.
    fake_ask = make_pki("rogue-ask").ask_pem()
    expect("cert_chain", verify, forged, vcek, ask_pem=fake_ask)


def test_another_chips_vcek_is_rejected() -> None:
    """A VCEK (validly chained) for chip B that signed a report naming chip A: the hwID check refuses it."""
    other_chip = hashlib.sha512(b"another chip").digest()
    vcek_b = make_vcek(PKI, KEY, hw_id=other_chip, tcb=REAL_TCB)
    e = expect("vcek_chip_id", verify_test_pki, sign_report(RAW, KEY), vcek_b)
    assert other_chip.hex() in e.message
    # Masked chip id: nothing binds the key to a chip.
    e = expect("vcek_chip_id", verify_test_pki, resigned(0x1A0, bytes(64)))
    assert "masked" in e.message


def test_vcek_for_another_tcb_is_rejected() -> None:
    """A key derived for an older TCB (e.g. before a microcode fix) must not vouch for a newer claim."""
    for older in (
        TcbVersion(3, 0, 8, 114),
        TcbVersion(2, 0, 8, 115),
        TcbVersion(3, 0, 7, 115),
        TcbVersion(3, 1, 8, 115),
    ):
        vcek = make_vcek(PKI, KEY, hw_id=REP.chip_id, tcb=older)
        expect("vcek_tcb", verify_test_pki, sign_report(RAW, KEY), vcek)
    # And a report claiming a higher REPORTED_TCB than its VCEK certifies.
    higher = bytes([3, 0, 0, 0, 0, 0, 9, 115])
    expect("vcek_tcb", verify_test_pki, resigned(0x180, higher))


def test_turin_layout_binding_with_test_pki() -> None:
    turin = make_pki("test-turin", product="Turin")
    key = fixed_p384("turin-vcek")
    chip = bytes.fromhex("1e550a8ee5cf9f4d")
    report = patch(patch(patch(RAW, 0, u32(3)), 0x188, bytes([0x1A, 0x02, 0x01])), 0x1A0, chip + bytes(56))
    report = patch(report, 0x180, bytes([1, 2, 3, 4, 0, 0, 0, 9]))  # FMC 1, BL 2, TEE 3, SNP 4, ucode 9
    tcb = TcbVersion(fmc=1, boot_loader=2, tee=3, snp=4, microcode=9)
    vcek = make_vcek(turin, key, hw_id=chip, tcb=tcb)
    res = snp_mod._verify(
        sign_report(report, key), vcek, expected_report_data=RD, policy=ANY_MEAS, now=NOW, ask=None, roots=turin.roots
    )
    assert (res.product, res.reported_tcb) == ("Turin", tcb)
    # The 56 padding bytes of a Turin CHIP_ID are part of the binding too.
    bad = sign_report(patch(report, 0x1A0 + 8, b"\x01"), key)
    expect(
        "vcek_chip_id",
        snp_mod._verify,
        bad,
        vcek,
        expected_report_data=RD,
        policy=ANY_MEAS,
        now=NOW,
        ask=None,
        roots=turin.roots,
    )
    # CPUID naming Milan while the chain ends at the Turin ARK.
    milan_cpuid = sign_report(patch(report, 0x188, bytes([0x19, 0x01])), key)
    expect(
        "product",
        snp_mod._verify,
        milan_cpuid,
        vcek,
        expected_report_data=RD,
        policy=ANY_MEAS,
        now=NOW,
        ask=None,
        roots=turin.roots,
    )
