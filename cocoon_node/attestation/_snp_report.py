"""The AMD SEV-SNP ATTESTATION_REPORT layout (1,184 bytes) and its parser.

Layout: AMD "SEV Secure Nested Paging Firmware ABI Specification" (pub. 56860), Table "ATTESTATION_REPORT
Structure", report versions 2 to 5. All integers are little-endian. Later versions only gave meaning to
bytes that were reserved before (CPUID family/model/stepping at 0x188 in v3, mitigation vectors at 0x1F8
in v5), so one set of offsets reads them all. The firmware signs bytes 0x000..0x29F; the signature's
R and S are 72-byte little-endian fields at 0x2A0 and 0x2E8 of which P-384 uses the low 48 bytes.

A TCB_VERSION (8 bytes) is laid out per product: Milan and Genoa put the boot loader SPL in byte 0, TEE
in 1, SNP firmware in 6 and microcode in 7; Turin added an FMC SPL and moved them (FMC 0, boot loader
1, TEE 2, SNP 3, microcode 7). Which layout applies follows from the product the VCEK chains to, so
the raw 8 bytes are kept and decoded with :meth:`SnpReport.tcb`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import QuoteFormatError

REPORT_LEN = 0x4A0  # 1,184 bytes
SIGNED_LEN = 0x2A0  # the signature covers bytes 0x000..0x29F
MIN_VERSION = 2
MAX_VERSION = 5  # newest version the ABI specification defines today; later ones are refused
SIG_ALGO_ECDSA_P384_SHA384 = 1

POLICY_MIGRATE_MA = 1 << 18  # a migration agent may be associated (it can read guest memory)
POLICY_DEBUG = 1 << 19  # the hypervisor may debug the guest: its memory is not confidential

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7

MILAN = "Milan"
GENOA = "Genoa"
TURIN = "Turin"
PRODUCTS: tuple[str, ...] = (MILAN, GENOA, TURIN)


@dataclass(frozen=True, order=True)
class TcbVersion:
    """The security patch levels (SPLs) of a TCB_VERSION; ``fmc`` exists on Turin only (0 elsewhere)."""

    boot_loader: int
    tee: int
    snp: int
    microcode: int
    fmc: int = 0

    @classmethod
    def decode(cls, raw: bytes, product: str) -> TcbVersion:
        if len(raw) != 8:
            raise QuoteFormatError(f"TCB_VERSION must be 8 bytes, got {len(raw)}")
        if product == TURIN:
            return cls(fmc=raw[0], boot_loader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7])
        if product in (MILAN, GENOA):
            return cls(boot_loader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])
        raise QuoteFormatError(f"unknown SEV-SNP product {product!r}")

    def meets(self, floor: TcbVersion) -> bool:
        """Every component at or above ``floor``'s (TCB versions are only partially ordered)."""
        return (
            self.boot_loader >= floor.boot_loader
            and self.tee >= floor.tee
            and self.snp >= floor.snp
            and self.microcode >= floor.microcode
            and self.fmc >= floor.fmc
        )


@dataclass(frozen=True)
class SnpReport:
    """A parsed ATTESTATION_REPORT. TCB fields are raw 8-byte TCB_VERSIONs; see :meth:`tcb`."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    key_info: int  # bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 2-4 SIGNING_KEY
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid_fam_id: int | None  # v3 and later
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: bytes
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: bytes
    launch_mit_vector: int | None  # v5 and later
    current_mit_vector: int | None
    signature_r: int
    signature_s: int
    raw: bytes

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_LEN]

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def migrate_ma(self) -> bool:
        return bool(self.policy & POLICY_MIGRATE_MA)

    @property
    def author_key_en(self) -> bool:
        return bool(self.key_info & 0x1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.key_info & 0x2)

    @property
    def signing_key(self) -> int:
        """0 = VCEK, 1 = VLEK, 7 = none (the report is unsigned)."""
        return (self.key_info >> 2) & 0x7

    @property
    def cpuid_product(self) -> str | None:
        """The product named by the v3+ CPUID fields (None for v2 or an unknown model)."""
        fam, mod = self.cpuid_fam_id, self.cpuid_mod_id
        if fam is None or mod is None:
            return None
        if fam == 0x19 and mod <= 0x0F:
            return MILAN
        if fam == 0x19 and (0x10 <= mod <= 0x1F or 0xA0 <= mod <= 0xAF):
            return GENOA
        if fam == 0x1A and mod <= 0x11:
            return TURIN
        return None

    def tcb(self, field: str, product: str) -> TcbVersion:
        """Decode ``current_tcb``, ``reported_tcb``, ``committed_tcb`` or ``launch_tcb`` for ``product``."""
        if field not in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
            raise ValueError(f"not a TCB field: {field}")
        raw: bytes = getattr(self, field)
        return TcbVersion.decode(raw, product)


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def _u64(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", data, off)[0])


def parse_snp_report(data: bytes) -> SnpReport:
    """Parse a raw SEV-SNP attestation report; raise QuoteFormatError on anything but a well-formed one.

    Exactly 1,184 bytes: the signature's unused high bytes and the 368 reserved bytes after it are
    not signed, so they must be zero (unsigned bytes must not carry data).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise QuoteFormatError("SEV-SNP report must be bytes")
    raw = bytes(data)
    if len(raw) != REPORT_LEN:
        raise QuoteFormatError(f"SEV-SNP report is {len(raw)} bytes, want {REPORT_LEN}")
    version = _u32(raw, 0x00)
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise QuoteFormatError(f"unsupported SEV-SNP report version {version} (known: {MIN_VERSION}..{MAX_VERSION})")
    r_field, s_field = raw[0x2A0:0x2E8], raw[0x2E8:0x330]
    if any(r_field[48:]) or any(s_field[48:]):
        raise QuoteFormatError("signature R or S has non-zero bytes beyond the 48 a P-384 scalar uses")
    if any(raw[0x330:]):
        raise QuoteFormatError("non-zero bytes in the reserved, unsigned tail of the report (0x330..0x49F)")
    v3 = version >= 3
    v5 = version >= 5
    return SnpReport(
        version=version,
        guest_svn=_u32(raw, 0x04),
        policy=_u64(raw, 0x08),
        family_id=raw[0x10:0x20],
        image_id=raw[0x20:0x30],
        vmpl=_u32(raw, 0x30),
        signature_algo=_u32(raw, 0x34),
        current_tcb=raw[0x38:0x40],
        platform_info=_u64(raw, 0x40),
        key_info=_u32(raw, 0x48),
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb=raw[0x180:0x188],
        cpuid_fam_id=raw[0x188] if v3 else None,
        cpuid_mod_id=raw[0x189] if v3 else None,
        cpuid_step=raw[0x18A] if v3 else None,
        chip_id=raw[0x1A0:0x1E0],
        committed_tcb=raw[0x1E0:0x1E8],
        current_build=raw[0x1E8],
        current_minor=raw[0x1E9],
        current_major=raw[0x1EA],
        committed_build=raw[0x1EC],
        committed_minor=raw[0x1ED],
        committed_major=raw[0x1EE],
        launch_tcb=raw[0x1F0:0x1F8],
        launch_mit_vector=_u64(raw, 0x1F8) if v5 else None,
        current_mit_vector=_u64(raw, 0x200) if v5 else None,
        signature_r=int.from_bytes(r_field, "little"),
        signature_s=int.from_bytes(s_field, "little"),
        raw=raw,
    )
