"""Allow-lists as operators write them (config files, flags): hex digests, ``NAME=HEX`` pairs, ``any``.

Each parser returns a frozenset or :data:`ANY` and raises ``ValueError`` naming the bad entry, so config
validation and the policy builder read the same lists the same way. ``any`` is the explicit wildcard
(an empty list allows nothing); it must be the only entry.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._snp_report import PRODUCTS, TcbVersion
from .policy import ANY, _Any, rtmr_set_digest

WILDCARD = "any"


def _hex(entry: str, size: int, what: str) -> bytes:
    try:
        raw = bytes.fromhex(entry.strip())
    except ValueError:
        raise ValueError(f"{what} {entry!r} is not hex") from None
    if len(raw) != size:
        raise ValueError(f"{what} {entry!r} is {len(raw)} bytes, expected {size}")
    return raw


def _wildcard(entries: tuple[str, ...], what: str) -> bool:
    if WILDCARD in (e.strip().lower() for e in entries):
        if len(entries) != 1:
            raise ValueError(f"{what}: 'any' must be the only entry")
        return True
    return False


def hex_set(entries: Iterable[str], size: int, what: str) -> frozenset[bytes] | _Any:
    """Digests of ``size`` bytes in hex, or ANY for the single entry ``any``."""
    items = tuple(entries)
    if _wildcard(items, what):
        return ANY
    return frozenset(_hex(e, size, what) for e in items)


def rtmr_sets(entries: Iterable[str]) -> frozenset[bytes] | _Any:
    """RTMR sets as ``RTMR0:RTMR1:RTMR2:RTMR3`` (4 x 96 hex digits) or their 64-hex-digit digest."""
    items = tuple(entries)
    if _wildcard(items, "RTMR set"):
        return ANY
    out = set()
    for e in items:
        parts = e.strip().split(":")
        if len(parts) == 4:
            regs = tuple(_hex(p, 48, "RTMR") for p in parts)
            out.add(rtmr_set_digest((regs[0], regs[1], regs[2], regs[3])))
        elif len(parts) == 1:
            out.add(_hex(parts[0], 32, "RTMR set digest"))
        else:
            raise ValueError(f"RTMR set {e!r} must be RTMR0:RTMR1:RTMR2:RTMR3 or a SHA-256 digest")
    return frozenset(out)


def named_models(entries: Iterable[str]) -> frozenset[tuple[str, bytes]]:
    """``NAME=HEX`` pairs: the weight hash HEX is allowed for the model NAME (split at the last ``=``)."""
    out = set()
    for e in entries:
        name, sep, digest = e.rpartition("=")
        if not sep or not name.strip():
            raise ValueError(f"allowed model {e!r} must be NAME=WEIGHT_HASH_HEX")
        if len(name.strip().encode()) > 256:
            raise ValueError(f"allowed model name {name!r} is longer than 256 bytes")
        out.add((name.strip(), _hex(digest, 32, "model weight hash")))
    return frozenset(out)


def snp_min_tcbs(entries: Iterable[str]) -> dict[str, TcbVersion]:
    """``PRODUCT=BL:TEE:SNP:UCODE`` (Turin: ``...:FMC``) per SEV-SNP product: the lowest TCB accepted there."""
    out: dict[str, TcbVersion] = {}
    for e in entries:
        product, sep, spec = e.partition("=")
        product = product.strip()
        if not sep or product not in PRODUCTS:
            raise ValueError(f"SEV-SNP minimum TCB {e!r} must be PRODUCT=BL:TEE:SNP:UCODE, PRODUCT one of {PRODUCTS}")
        try:
            parts = [int(p) for p in spec.split(":")]
        except ValueError:
            raise ValueError(f"SEV-SNP minimum TCB {e!r}: components must be integers") from None
        if len(parts) not in (4, 5) or any(not 0 <= p <= 255 for p in parts):
            raise ValueError(f"SEV-SNP minimum TCB {e!r}: 4 (Turin: 5) components of 0..255")
        if product in out:
            raise ValueError(f"SEV-SNP minimum TCB for {product} given twice")
        out[product] = TcbVersion(*parts)
    return out


def vmpl_set(entries: Iterable[str]) -> frozenset[int]:
    """VMPLs (0..3) an SEV-SNP report may be requested at; 0 is the guest kernel's own, most privileged level."""
    out = set()
    for e in entries:
        if e.strip() not in ("0", "1", "2", "3"):
            raise ValueError(f"VMPL {e!r} must be 0, 1, 2 or 3")
        out.add(int(e))
    return frozenset(out)
