"""SEV-SNP evidence from configfs-tsm (provider sev_guest: outblob = report, auxblob = certificate table).

A fake configfs tree plays the kernel, serving the real Milan report and a certificate table with the
real VCEK and AMD's ASK and ARK; what comes out verifies to the pinned Milan ARK.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from cocoon_node.attestation import ANY, QuoteFormatError, SnpPolicy, TsmError, parse_snp_report, verify_snp_report
from cocoon_node.attestation import snp as snp_mod
from cocoon_node.attestation._snp_certtable import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    MAX_TABLE_BYTES,
    SnpCertTable,
    parse_snp_cert_table,
)
from cocoon_node.attestation.tsm import SnpEvidence, get_snp_evidence, get_tdx_quote

from .snp_helpers import NOW, real_report, real_vcek
from .test_tsm import FakeKernel

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

RAW = real_report()
VCEK = real_vcek()
TABLE = SnpCertTable(vcek=VCEK, ask=snp_mod.AMD_ASK_MILAN_PEM, ark=snp_mod.AMD_ARK_MILAN_PEM)


class FakeSevGuest(FakeKernel):
    """configfs-tsm on an SEV-SNP guest: the report in outblob, the host's certificate table in auxblob."""

    def __init__(self, root: Path, report: bytes, table: bytes, provider: str = "sev_guest") -> None:
        super().__init__(root, provider=provider)
        self.report = report
        self.table = table
        self.inblobs: list[bytes] = []

    def _write(self, path: Path, data: bytes) -> None:
        super()._write(path, data)  # bumps generation
        self.inblobs.append(data)
        (path.parent / "outblob").write_bytes(self.report)
        (path.parent / "auxblob").write_bytes(self.table)


def test_snp_evidence_from_fake_configfs_verifies(tmp_path: Path) -> None:
    rd = parse_snp_report(RAW).report_data
    k = FakeSevGuest(tmp_path, RAW, TABLE.to_bytes())
    report, table = k.get_snp_report(rd)
    assert k.inblobs == [rd] and report == RAW
    assert k.ops[0].startswith("mkdir cocoon-") and k.ops[1:] == [
        "read provider",
        "read generation",
        "write inblob 64",
        "read outblob",
        "read auxblob",
        "read generation",
        "rmdir",
    ]
    assert list(tmp_path.iterdir()) == []  # entry removed
    certs = SnpEvidence(report, table).certificates()
    assert certs.vcek == VCEK and certs.leaf == VCEK and certs.ask == snp_mod.AMD_ASK_MILAN_PEM
    res = verify_snp_report(
        report, certs.vcek, expected_report_data=rd, policy=SnpPolicy(measurements=ANY), now=NOW, ask_pem=certs.ask
    )
    assert res.product == "Milan"


def test_get_snp_evidence_absent_and_wrong_provider(tmp_path: Path) -> None:
    with pytest.raises(TsmError, match="not available"):
        get_snp_evidence(bytes(64), tsm_root=tmp_path / "nope")
    with pytest.raises(TsmError, match="64 bytes"):
        get_snp_evidence(bytes(63), tsm_root=tmp_path)
    # A TDX guest's tree refuses an SNP request, and an SNP guest's a TDX one.
    tdx = FakeSevGuest(tmp_path, RAW, b"", provider="tdx_guest")
    with pytest.raises(TsmError, match="'tdx_guest', not 'sev_guest'"):
        tdx.get_snp_report(bytes(64))
    snp = FakeSevGuest(tmp_path, RAW, b"")
    with pytest.raises(TsmError, match="'sev_guest', not 'tdx_guest'"):
        snp.get_quote(bytes(64))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TsmError):
        get_tdx_quote(bytes(64), tsm_root=tmp_path / "nope")


def test_empty_auxblob_means_no_certificates(tmp_path: Path) -> None:
    k = FakeSevGuest(tmp_path, RAW, b"")
    ev = SnpEvidence(*k.get_snp_report(bytes(64)))
    assert ev.certificates() == SnpCertTable() and ev.certificates().leaf is None


def test_cert_table_round_trip_and_unknown_guids() -> None:
    odd = uuid.UUID("11111111-2222-3333-4444-555555555555")
    t = SnpCertTable(vcek=b"V" * 10, ask=b"S" * 3, ark=b"R", others=((odd, b"xyz"),))
    back = parse_snp_cert_table(t.to_bytes())
    assert back == t
    # The GUIDs are in string byte order, as the kernel's tools write them.
    raw = TABLE.to_bytes()
    assert GUID_VCEK.bytes in raw[:96] and GUID_ASK.bytes in raw[:96] and GUID_ARK.bytes in raw[:96]


def _entry(guid: uuid.UUID, offset: int, length: int) -> bytes:
    return guid.bytes + struct.pack("<II", offset, length)


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"", "truncated"),
        (b"\x00" * 23, "truncated"),
        (_entry(GUID_VCEK, 24, 4) + b"abcd", "truncated"),  # no terminator
        (_entry(GUID_VCEK, 48, 100) + bytes(24) + b"abcd", "out of bounds"),
        (_entry(GUID_VCEK, 0xFFFFFFF0, 0x20) + bytes(24), "out of bounds"),
        (_entry(GUID_VCEK, 48, 0) + bytes(24), "out of bounds"),
        (_entry(GUID_VCEK, 72, 1) + _entry(GUID_VCEK, 72, 1) + bytes(24) + b"x", "twice"),
        (b"".join(_entry(uuid.UUID(int=i + 1), 0, 1) for i in range(40)) + bytes(24), "more than 32"),
        (bytes(MAX_TABLE_BYTES + 1), "more than"),
    ],
    ids=["empty", "short", "no-terminator", "past-end", "overflow", "zero-length", "duplicate", "too-many", "huge"],
)
def test_malformed_cert_tables(blob: bytes, match: str) -> None:
    with pytest.raises(QuoteFormatError, match=match):
        parse_snp_cert_table(blob)


def test_random_cert_tables_never_escape() -> None:
    import random

    rng = random.Random(6)
    good = TABLE.to_bytes()
    for _ in range(300):
        b = bytearray(good[: rng.randrange(len(good) + 1)])
        for _ in range(rng.randint(0, 6)):
            if b:
                b[rng.randrange(min(len(b), 120))] = rng.randrange(256)
        try:
            parse_snp_cert_table(bytes(b))
        except QuoteFormatError:
            pass
