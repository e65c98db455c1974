"""Worker side: AMD's CRL for our SEV-SNP product from AMD's KDS, cached on disk, shipped as collateral.

``GET {kds}/vcek/v1/{product}/crl`` (``/vlek/v1/...`` for a VLEK-signed report) answers the DER CRL the
product's ARK signs (AMD pub. 57230). The worker checks it against the pinned ARK and its own chain before
caching or shipping it, as a requester will (:func:`cocoon_node.attestation._snp_crl.check_snp_crl`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import trio
from cryptography import x509

from ._snp_chain import AMD_SNP_ROOTS, SnpRoot, load_cert, verify_vcek_chain
from ._snp_crl import check_snp_crl
from .collateral import encode_snp_collateral
from .errors import AttestationError
from .snp_evidence import decode_snp_evidence

log = logging.getLogger(__name__)

__all__ = ["AMD_KDS_URL", "SnpCrlCache"]

AMD_KDS_URL = "https://kdsintf.amd.com"


def root_inter(ask: bytes, product: str, roots: dict[str, SnpRoot]) -> x509.Certificate:
    """The intermediate the chain went through: the shipped ASVK, else the product's pinned ASK."""
    return load_cert(ask, "ask_format", "ASVK certificate") if ask else roots[product].ask


class SnpCrlCache:
    """AMD's CRL per product and key kind under ``directory``, kept until its nextUpdate (minus a margin).

    :meth:`for_evidence` returns SNP collateral bytes to ship, or b"" (logged) when none is to be had.
    ``roots`` is for tests with a stand-in AMD PKI; production uses the pinned ARKs.
    """

    def __init__(self, directory: Path, base_url: str = AMD_KDS_URL, *, timeout: float = 20.0,
                 refresh_margin: timedelta = timedelta(hours=6), clock: Callable[[], datetime] | None = None,
                 roots: dict[str, SnpRoot] | None = None) -> None:
        self._dir = Path(directory)
        self._base = (base_url or AMD_KDS_URL).rstrip("/")
        self._timeout = timeout
        self._margin = refresh_margin
        self._clock = clock or (lambda: datetime.now(UTC))
        self._roots = roots if roots is not None else dict(AMD_SNP_ROOTS)
        self.fetches = 0
        self.failures = 0

    def _usable(self, der: bytes, root: SnpRoot, inter: x509.Certificate, at: datetime) -> bool:
        try:
            check_snp_crl(der, root.ark, inter, at)
        except AttestationError:
            return False
        return True

    async def for_evidence(self, evidence: bytes) -> bytes:
        now = self._clock()
        try:
            record = decode_snp_evidence(evidence)
            leaf = verify_vcek_chain(record.vcek, now=now, ask=record.ask or None, roots=self._roots)
            inter = root_inter(record.ask, leaf.product, self._roots)
        except AttestationError as exc:
            log.warning("no AMD CRL: our own SNP evidence does not verify: %s", exc)
            return b""
        root = self._roots[leaf.product]
        kind = "vlek" if leaf.kind == "VLEK" else "vcek"
        path = self._dir / f"snp-crl-{leaf.product.lower()}-{kind}.der"
        cached = path.read_bytes() if path.exists() else None
        if cached is not None and self._usable(cached, root, inter, now + self._margin):
            return encode_snp_collateral(cached)
        url = f"{self._base}/{kind}/v1/{leaf.product}/crl"
        self.fetches += 1
        problem = ""
        der = b""
        try:
            with trio.fail_after(2 * self._timeout):
                async with httpx.AsyncClient(timeout=self._timeout) as client:
                    resp = await client.get(url)
            if resp.status_code != 200:
                problem = f"HTTP {resp.status_code}"
            else:
                der = resp.content
                check_snp_crl(der, root.ark, inter, now)
        except trio.TooSlowError:
            problem = f"no answer within {2 * self._timeout:.0f} s"
        except (httpx.HTTPError, AttestationError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            self.failures += 1
            usable = cached is not None and self._usable(cached, root, inter, now)
            log.warning("fetching AMD's CRL from %s FAILED: %s; %s", url, problem,
                        "shipping the cached CRL until it expires" if usable else
                        "the report goes out WITHOUT it (testnet/mainnet requesters refuse it)")
            return encode_snp_collateral(cached) if usable and cached is not None else b""
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(der)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return encode_snp_collateral(der)
