"""The SEV-SNP certificate table a host hands a guest with its report (configfs-tsm ``auxblob``).

Format (AMD "SEV-ES Guest-Hypervisor Communication Block Standardization", pub. 56421, MSG_REPORT_REQ
certificate table): a list of 24-byte entries ``GUID (16) || offset u32 LE || length u32 LE``, ended by
an all-zero entry; offsets count from the start of the table. The GUIDs name the certificate (the byte
order is the GUID's string order, as the Linux sev-guest tools and virtee/sev write them).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from .errors import QuoteFormatError

GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_CRL = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")
_NAMES = {GUID_ARK: "ark", GUID_ASK: "ask", GUID_VCEK: "vcek", GUID_VLEK: "vlek", GUID_CRL: "crl"}

ENTRY_LEN = 24
MAX_TABLE_BYTES = 64 * 1024  # a few certificates; anything larger is not a certificate table
MAX_ENTRIES = 32


@dataclass(frozen=True)
class SnpCertTable:
    """The certificates found in a table (DER as given); ``others`` keeps entries with unknown GUIDs."""

    vcek: bytes | None = None
    vlek: bytes | None = None
    ask: bytes | None = None
    ark: bytes | None = None
    crl: bytes | None = None
    others: tuple[tuple[uuid.UUID, bytes], ...] = ()

    @property
    def leaf(self) -> bytes | None:
        """The chip key certificate the report is signed under: the VCEK, else the VLEK."""
        return self.vcek if self.vcek is not None else self.vlek

    def to_bytes(self) -> bytes:
        """Encode as a table (tests build host-supplied tables with this)."""
        items = [(g, getattr(self, n)) for g, n in _NAMES.items() if getattr(self, n) is not None]
        items += list(self.others)
        offset = ENTRY_LEN * (len(items) + 1)
        head, body = b"", b""
        for guid, data in items:
            head += guid.bytes + struct.pack("<II", offset + len(body), len(data))
            body += data
        return head + bytes(ENTRY_LEN) + body


def parse_snp_cert_table(blob: bytes) -> SnpCertTable:
    """Parse a certificate table; raise QuoteFormatError when truncated, out of bounds or duplicated."""
    data = bytes(blob)
    if len(data) > MAX_TABLE_BYTES:
        raise QuoteFormatError(f"certificate table is {len(data)} bytes, more than {MAX_TABLE_BYTES}")
    found: dict[str, bytes] = {}
    others: list[tuple[uuid.UUID, bytes]] = []
    pos = 0
    while True:
        if pos + ENTRY_LEN > len(data):
            raise QuoteFormatError("certificate table truncated: no all-zero terminating entry")
        entry = data[pos : pos + ENTRY_LEN]
        pos += ENTRY_LEN
        if not any(entry):
            break
        if pos // ENTRY_LEN > MAX_ENTRIES:
            raise QuoteFormatError(f"certificate table has more than {MAX_ENTRIES} entries")
        guid = uuid.UUID(bytes=entry[:16])
        offset, length = struct.unpack("<II", entry[16:])
        if length == 0 or offset + length > len(data):
            raise QuoteFormatError(f"certificate table entry {guid}: {length} bytes at {offset} out of bounds")
        cert = data[offset : offset + length]
        name = _NAMES.get(guid)
        if name is None:
            others.append((guid, cert))
        elif name in found:
            raise QuoteFormatError(f"certificate table names the {name.upper()} twice")
        else:
            found[name] = cert
    return SnpCertTable(others=tuple(others), **found)
