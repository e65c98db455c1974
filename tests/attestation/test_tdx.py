"""TDX quote v4: parsing, the full verification chain on a real quote, and tampering."""

from __future__ import annotations

import base64
import struct
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cocoon_node.attestation import AttestationError, QuoteFormatError, parse_tdx_quote, verify_tdx_quote
from cocoon_node.attestation import tdx as tdx_mod

from .att_helpers import AT_VALID, FakePki, forge_quote, make_fake_pki, real_quote, real_quote_bytes

RAW = real_quote_bytes()
Q = real_quote()
OWN_RD = Q.td_report.report_data

# Offsets in the real quote (header 0..48, TD report body 48..632, sig data length 632..636).
OFF_MRTD = 48 + 16 + 48 + 48 + 8 + 8 + 8
OFF_REPORT_DATA = 632 - 64
OFF_SIG = 636
OFF_ATT_KEY = OFF_SIG + 64
OFF_QE_REPORT = OFF_ATT_KEY + 64 + 6
OFF_QE_SIG = OFF_QE_REPORT + 384
OFF_AUTH = OFF_QE_SIG + 64 + 2


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[offset] ^= mask
    return bytes(b)


def expect_check(check: str, quote: bytes, rd: bytes = OWN_RD, at: datetime | int = AT_VALID) -> AttestationError:
    with pytest.raises(AttestationError) as ei:
        verify_tdx_quote(quote, rd, at=at)
    assert ei.value.check == check, str(ei.value)
    return ei.value


def test_parse_layout_matches_dcap_qvl_and_round_trips() -> None:
    import dcap_qvl

    ref = dcap_qvl.parse_quote(RAW)
    h = Q.header
    assert (h.version, h.att_key_type, h.tee_type) == (4, 2, 0x81)
    assert h.qe_vendor_id == ref.header.qe_vendor_id and h.user_data == ref.header.user_data
    r = ref.report
    td = Q.td_report
    for mine, theirs in [
        ("tee_tcb_svn", "tee_tcb_svn"),
        ("mrseam", "mr_seam"),
        ("mrsignerseam", "mr_signer_seam"),
        ("seam_attributes", "seam_attributes"),
        ("td_attributes", "td_attributes"),
        ("xfam", "xfam"),
        ("mrtd", "mr_td"),
        ("mrconfigid", "mr_config_id"),
        ("mrowner", "mr_owner"),
        ("mrownerconfig", "mr_owner_config"),
        ("rtmr0", "rt_mr0"),
        ("rtmr1", "rt_mr1"),
        ("rtmr2", "rt_mr2"),
        ("rtmr3", "rt_mr3"),
        ("report_data", "report_data"),
    ]:
        assert getattr(td, mine) == getattr(r, theirs), mine
    assert Q.pck_chain_pem.rstrip(b"\0") == ref.cert_chain_pem_bytes().rstrip(b"\0")
    assert Q.outer_cert_type == 6 and Q.inner_cert_type == 5
    assert len(Q.qe_auth_data) == 32
    assert Q.padding == 70  # the sample carries 70 zero bytes after the signature data
    assert Q.to_bytes() == RAW


def test_real_quote_verifies_whole_chain(capsys: pytest.CaptureFixture[str]) -> None:
    res = verify_tdx_quote(RAW, OWN_RD, at=AT_VALID)
    assert res.tcb_checked is False and res.tcb_reason == "no collateral supplied"
    td = res.quote.td_report
    qe = res.quote.qe_report
    leaf = res.quote.pck_chain()[0]
    with capsys.disabled():
        print("\n--- real TDX quote ---")
        for name in (
            "tee_tcb_svn",
            "mrseam",
            "td_attributes",
            "xfam",
            "mrtd",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
        ):
            print(f"{name:>14}: {getattr(td, name).hex()}")
        print(f"{'image_hash':>14}: {res.image_hash.hex()}")
        print(f"{'qe mrenclave':>14}: {qe.mrenclave.hex()} isvsvn={qe.isv_svn}")
        print(f"{'pck leaf':>14}: {leaf.not_valid_before_utc} .. {leaf.not_valid_after_utc}")
    assert td.mrtd.hex().startswith("7357a10d2e2724df")
    assert not td.debug


def test_real_quote_at_now() -> None:
    """Reports what happens at the real clock: fine until the PCK leaf expires (2032-07-20)."""
    now = datetime.now(UTC)
    leaf = Q.pck_chain()[0]
    if now <= leaf.not_valid_after_utc:
        verify_tdx_quote(RAW, OWN_RD)
    else:  # pragma: no cover - after 2032
        expect_check("cert_validity", RAW, at=now)


@pytest.mark.parametrize(
    "at",
    [datetime(2025, 7, 1, tzinfo=UTC), datetime(2032, 8, 1, tzinfo=UTC)],
    ids=["before-leaf", "after-leaf"],
)
def test_outside_validity_window(at: datetime) -> None:
    expect_check("cert_validity", RAW, at=at)


def test_time_as_unix_seconds() -> None:
    verify_tdx_quote(RAW, OWN_RD, at=int(AT_VALID.timestamp()))
    expect_check("cert_validity", RAW, at=0)


@pytest.mark.parametrize(
    ("offset", "check"),
    [
        (8, "quote_signature"),  # header: qe_svn (reserved)
        (12, "quote_signature"),  # header: QE vendor id
        (40, "quote_signature"),  # header: user data
        (48, "quote_signature"),  # body: TEE_TCB_SVN
        (64, "quote_signature"),  # body: MRSEAM
        (OFF_MRTD, "quote_signature"),
        (OFF_MRTD + 47, "quote_signature"),
        (OFF_MRTD + 48 * 4 + 5, "quote_signature"),  # RTMR0
        (OFF_REPORT_DATA, "quote_signature"),
        (OFF_REPORT_DATA + 63, "quote_signature"),
        (OFF_SIG, "quote_signature"),
        (OFF_SIG + 40, "quote_signature"),
        (OFF_ATT_KEY + 3, "qe_report_data_binding"),
        (OFF_ATT_KEY + 63, "qe_report_data_binding"),
        (OFF_QE_REPORT, "qe_report_signature"),  # QE CPUSVN
        (OFF_QE_REPORT + 128, "qe_report_signature"),  # QE MRSIGNER
        (OFF_QE_REPORT + 320, "qe_report_signature"),  # QE REPORTDATA
        (OFF_QE_SIG + 5, "qe_report_signature"),
        (OFF_QE_SIG + 60, "qe_report_signature"),
        (OFF_AUTH, "qe_report_data_binding"),
        (OFF_AUTH + 31, "qe_report_data_binding"),
    ],
)
def test_tamper_signed_regions(offset: int, check: str) -> None:
    expect_check(check, flip(RAW, offset))


def test_tampered_report_data_with_matching_expectation_still_fails_signature() -> None:
    bad = flip(RAW, OFF_REPORT_DATA + 7)
    expect_check("quote_signature", bad, rd=parse_tdx_quote(bad).td_report.report_data)


def test_report_data_mismatch() -> None:
    expect_check("report_data", RAW, rd=bytes(64))
    expect_check("report_data", RAW, rd=OWN_RD[:32])


def _chain_ders() -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in Q.pck_chain()]


def _with_chain(ders: list[bytes]) -> bytes:
    pem = b"".join(
        b"-----BEGIN CERTIFICATE-----\n"
        + b"\n".join(base64.b64encode(d)[i : i + 64] for i in range(0, len(base64.b64encode(d)), 64))
        + b"\n-----END CERTIFICATE-----\n"
        for d in ders
    )
    return replace(Q, pck_chain_pem=pem + b"\0").to_bytes()


def test_rebuilt_chain_is_identical() -> None:
    assert _with_chain(_chain_ders()) == RAW


def _tamper_cert(index: int, find: bytes, delta: int = 0) -> bytes:
    ders = _chain_ders()
    pos = ders[index].index(find) + delta
    ders[index] = flip(ders[index], pos)
    x509.load_der_x509_certificate(ders[index])  # still parses
    return _with_chain(ders)


def _serial(index: int) -> bytes:
    c = Q.pck_chain()[index]
    return c.serial_number.to_bytes((c.serial_number.bit_length() + 8) // 8, "big")


def _point(index: int) -> bytes:
    return (
        Q.pck_chain()[index]
        .public_key()
        .public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )


def _sig_tail(index: int) -> bytes:
    return Q.pck_chain()[index].signature[-8:]


@pytest.mark.parametrize(
    ("index", "where", "check"),
    [
        (0, "serial", "pck_chain"),
        (0, "pubkey", "pck_chain"),
        (0, "signature", "pck_chain"),
        (1, "serial", "pck_chain"),
        (1, "pubkey", "pck_chain"),
        (1, "signature", "pck_chain"),
        (2, "serial", "pck_chain"),  # root's self-signature no longer holds
        (2, "signature", "pck_chain"),
        (2, "pubkey", "pck_root"),  # not the pinned key any more
    ],
)
def test_tamper_each_certificate(index: int, where: str, check: str) -> None:
    if where == "serial":
        bad = _tamper_cert(index, _serial(index), 3)
    elif where == "pubkey":
        bad = _tamper_cert(index, _point(index), 40)
    else:
        bad = _tamper_cert(index, _sig_tail(index), 7)
    expect_check(check, bad)


def test_chain_rooted_elsewhere_fails_pck_root() -> None:
    pki = make_fake_pki()
    forged = forge_quote(pki)
    expect_check("pck_root", forged)
    # Positive control: with the fake root as anchor everything else verifies, so the root is the
    # only thing that differs.
    res = tdx_mod._verify(forged, OWN_RD, at=AT_VALID, collateral=None, root=pki.root)
    assert res.image_hash == Q.td_report.image_hash()


def test_fake_root_with_intel_subject_and_real_chain_links() -> None:
    """A fake root that re-signs the *real* intermediate cannot pass either."""
    pki: FakePki = make_fake_pki("other")
    ders = _chain_ders()
    ders[2] = pki.root.public_bytes(serialization.Encoding.DER)
    expect_check("pck_root", _with_chain(ders))


def test_wrong_leaf_issuer_order() -> None:
    ders = _chain_ders()
    expect_check("pck_root", _with_chain([ders[0], ders[2], ders[1]]))
    expect_check("pck_chain", _with_chain([ders[1], ders[0], ders[2]]))


def test_qe_identity_pinned() -> None:
    pki = make_fake_pki()
    q = replace(Q, qe_report_bytes=replace(Q.qe_report, isv_prod_id=1).to_bytes())
    forged = forge_quote(pki, base=q)
    with pytest.raises(AttestationError) as ei:
        tdx_mod._verify(forged, OWN_RD, at=AT_VALID, collateral=None, root=pki.root)
    assert ei.value.check == "qe_identity"


@pytest.mark.parametrize("cut", [0, 1, 47, 48, 100, 631, 632, 635, 700, 765, 1000, 1219, 1257, 2000, 4939])
def test_truncation(cut: int) -> None:
    with pytest.raises(QuoteFormatError) as ei:
        parse_tdx_quote(RAW[:cut])
    assert ei.value.check == "format"
    with pytest.raises(AttestationError) as ei2:
        verify_tdx_quote(RAW[:cut], OWN_RD, at=AT_VALID)
    assert ei2.value.check == "format"


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "needle"),
    [
        (0, "<H", 3, "version"),
        (0, "<H", 5, "version"),
        (2, "<H", 3, "attestation key type"),
        (4, "<I", 0, "TDX"),
        (OFF_ATT_KEY + 64, "<H", 5, "certification data type"),
        (OFF_AUTH + 32, "<H", 3, "nested certification data type"),
    ],
)
def test_wrong_version_and_types(offset: int, fmt: str, value: int, needle: str) -> None:
    b = bytearray(RAW)
    struct.pack_into(fmt, b, offset, value)
    with pytest.raises(QuoteFormatError, match=needle):
        parse_tdx_quote(bytes(b))


def test_padding_rules() -> None:
    parse_tdx_quote(RAW[:4940])  # no padding
    parse_tdx_quote(RAW + bytes(10))
    with pytest.raises(QuoteFormatError, match="non-zero trailing"):
        parse_tdx_quote(RAW + b"\x01")


def test_inner_length_mismatch() -> None:
    b = bytearray(RAW)
    struct.pack_into("<I", b, OFF_ATT_KEY + 66, struct.unpack_from("<I", b, OFF_ATT_KEY + 66)[0] - 1)
    with pytest.raises(QuoteFormatError):
        parse_tdx_quote(bytes(b))


def test_garbage_chain_is_format_error() -> None:
    bad = replace(Q, pck_chain_pem=b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").to_bytes()
    expect_check("format", bad)
    two = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in Q.pck_chain()[:2])
    expect_check("format", replace(Q, pck_chain_pem=two).to_bytes())


def test_pinned_root_is_intels() -> None:
    from cryptography.hazmat.primitives import hashes

    root = x509.load_pem_x509_certificate(tdx_mod.INTEL_SGX_ROOT_CA_PEM)
    assert root.subject.rfc4514_string().startswith("C=US,ST=CA,L=Santa Clara,O=Intel Corporation,CN=Intel SGX Root CA")
    assert root.fingerprint(hashes.SHA256()).hex() == (
        "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
    )


def test_every_byte_is_covered() -> None:
    """Flip bit 7 of every 3rd byte: only AttestationError comes out, and nothing passes except PEM
    framing bytes (newlines between blocks, the trailing NUL): PEM parsing skips text outside the
    blocks and only the DER certificates are authenticated. So quote bytes are malleable there;
    never identify a quote by its hash."""
    passed = []
    for pos in range(0, len(RAW), 3):
        try:
            verify_tdx_quote(flip(RAW, pos, 0x80), OWN_RD, at=AT_VALID)
            passed.append(pos)
        except AttestationError:
            pass
    pem_start = OFF_AUTH + 32 + 6
    assert all(pos >= pem_start and RAW[pos] in b"\n\0" for pos in passed), passed
