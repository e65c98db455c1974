"""Worker side: fetch Intel's TDX collateral from a PCCS or Intel's PCS, and cache it on disk.

The PCS/PCCS v4 API (Intel's "Provisioning Certification Service for ECDSA Attestation" spec), as dcap-qvl's
own client reads it:

- ``GET {base}/sgx/certification/v4/pckcrl?ca=platform|processor&encoding=der``: the PCK CA's CRL, issuer
  chain in the ``SGX-PCK-CRL-Issuer-Chain`` header (URL-encoded PEM);
- ``GET {base}/tdx/certification/v4/tcb?fmspc=...``: ``{"tcbInfo": {...}, "signature": hex}``, chain in
  ``TCB-Info-Issuer-Chain`` (or ``SGX-TCB-Info-Issuer-Chain``);
- ``GET {base}/tdx/certification/v4/qe/identity?update=standard``: ``{"enclaveIdentity": {...}, "signature"}``,
  chain in ``SGX-Enclave-Identity-Issuer-Chain``;
- the root CA's CRL: a PCCS serves it (hex) at ``/sgx/certification/v4/rootcacrl``; Intel's PCS does not,
  so it comes from the root certificate's CRL distribution point.

The signed texts are kept byte for byte (the JSON member as it came), since Intel signed those bytes. Nothing
here is trusted: the worker checks what it fetched against its own quote before shipping it, and requesters
check it again at their own clock.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import trio
from cryptography import x509

from .collateral import (
    TdxCollateralRecord,
    encode_tdx_collateral,
    tdx_collateral_from_json,
    tdx_collateral_to_json,
    tdx_collateral_window,
)
from .errors import AttestationError

log = logging.getLogger(__name__)

__all__ = ["INTEL_PCS_URL", "CollateralFetchError", "TdxCollateralCache", "fetch_tdx_collateral"]

INTEL_PCS_URL = "https://api.trustedservices.intel.com"


class CollateralFetchError(Exception):
    """The PCCS/PCS could not be reached or answered something that is not collateral."""


def _member_text(body: str, name: str) -> str:
    """The exact text of top-level member ``name`` of a JSON object (what Intel signed), not a re-encoding."""
    dec = json.JSONDecoder()
    i = body.index("{") + 1
    while True:
        while body[i] in " \t\r\n,":
            i += 1
        key, i = json.decoder.scanstring(body, i + 1)  # type: ignore[attr-defined]
        while body[i] in " \t\r\n:":
            i += 1
        _value, end = dec.raw_decode(body, i)
        if key == name:
            return body[i:end]
        i = end


def _signed_part(body: str, member: str, what: str) -> tuple[str, bytes]:
    try:
        doc = json.loads(body)
        text = _member_text(body, member)
        return text, bytes.fromhex(doc["signature"])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CollateralFetchError(f"{what}: not a signed {member!r} answer: {exc}") from exc


def _header(resp: httpx.Response, *names: str) -> str:
    for name in names:
        if name in resp.headers:
            return unquote(resp.headers[name])
    raise CollateralFetchError(f"{resp.request.url}: no {names[0]} header")


def _quote_platform(quote: bytes) -> tuple[str, str]:
    """(FMSPC hex, "platform" | "processor") from the PCK certificate in the quote."""
    import dcap_qvl

    try:
        q = dcap_qvl.parse_quote(bytes(quote))
        return str(q.fmspc()).upper(), str(q.ca())
    except ValueError as exc:
        raise AttestationError("format", f"quote has no readable PCK certificate: {exc}") from exc


def _crl_der(body: bytes) -> bytes:
    """A CRL as DER whether the server sent DER or hex text (a PCCS sends the root CA CRL as hex)."""
    text = body.strip()
    if text and all(c in b"0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text.decode())
    return body


def _root_crl_url(chain_pem: str) -> str:
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    dps = certs[-1].extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    for dp in dps:
        for name in dp.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier):
                return str(name.value)
    raise CollateralFetchError("the Intel root certificate names no CRL distribution point")


async def fetch_tdx_collateral(quote: bytes, base_url: str, client: httpx.AsyncClient) -> TdxCollateralRecord:
    """Fetch the collateral for ``quote``'s platform from the PCCS/PCS at ``base_url``; raise
    CollateralFetchError (network, HTTP status, shape) or AttestationError (a quote without a PCK chain)."""
    fmspc, ca = _quote_platform(quote)
    base = base_url.rstrip("/")

    async def get(url: str) -> httpx.Response:
        try:
            resp = await client.get(url)
        except httpx.HTTPError as exc:
            raise CollateralFetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise CollateralFetchError(f"{url}: HTTP {resp.status_code}")
        return resp

    crl = await get(f"{base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der")
    tcb = await get(f"{base}/tdx/certification/v4/tcb?fmspc={fmspc}")
    qe = await get(f"{base}/tdx/certification/v4/qe/identity?update=standard")
    tcb_info, tcb_sig = _signed_part(tcb.text, "tcbInfo", "TCB info")
    qe_identity, qe_sig = _signed_part(qe.text, "enclaveIdentity", "QE identity")
    qe_chain = _header(qe, "SGX-Enclave-Identity-Issuer-Chain")
    if base.startswith(INTEL_PCS_URL):
        root_crl = (await get(_root_crl_url(qe_chain))).content
    else:
        root_crl = _crl_der((await get(f"{base}/sgx/certification/v4/rootcacrl")).content)
    try:
        return TdxCollateralRecord(
            kind="tdx",
            pck_crl_issuer_chain=_header(crl, "SGX-PCK-CRL-Issuer-Chain"),
            root_ca_crl=root_crl,
            pck_crl=_crl_der(crl.content),
            tcb_info_issuer_chain=_header(tcb, "TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"),
            tcb_info=tcb_info,
            tcb_info_signature=tcb_sig,
            qe_identity_issuer_chain=qe_chain,
            qe_identity=qe_identity,
            qe_identity_signature=qe_sig,
        )
    except ValueError as exc:
        raise CollateralFetchError(f"collateral from {base} out of bounds: {exc}") from exc


class TdxCollateralCache:
    """Collateral per platform (FMSPC + PCK CA) under ``directory``, kept while its own window lasts.

    :meth:`for_quote` returns the encoded collateral to ship (b"" when there is none to be had: the fetch
    failure is logged with its URL and cause, and a requester on testnet/mainnet will refuse the report).
    ``check`` (default: dcap-qvl over our own quote) refuses to cache or ship collateral that does not verify.
    """

    def __init__(self, directory: Path, base_url: str = INTEL_PCS_URL, *, timeout: float = 20.0,
                 refresh_margin: timedelta = timedelta(hours=6), clock: Callable[[], datetime] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 check: Callable[[bytes, TdxCollateralRecord, datetime], Any] | None = None) -> None:
        self._dir = Path(directory)
        self._base = base_url or INTEL_PCS_URL
        self._timeout = timeout
        self._margin = refresh_margin
        self._clock = clock or (lambda: datetime.now(UTC))
        self._transport = transport
        self._check = check or _verify_own
        self.fetches = 0
        self.failures = 0

    def _path(self, fmspc: str, ca: str) -> Path:
        return self._dir / f"tdx-collateral-{fmspc.lower()}-{ca}.json"

    def _cached(self, path: Path) -> TdxCollateralRecord | None:
        try:
            return tdx_collateral_from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, AttestationError) as exc:
            log.warning("ignoring unreadable cached TDX collateral %s: %s", path, exc)
            return None

    def _store(self, path: Path, record: TdxCollateralRecord) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(tdx_collateral_to_json(record))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    async def for_quote(self, quote: bytes) -> bytes:
        now = self._clock()
        try:
            fmspc, ca = _quote_platform(quote)
        except AttestationError as exc:
            log.warning("no TDX collateral: %s", exc)
            return b""
        path = self._path(fmspc, ca)
        cached = self._cached(path)
        if cached is not None and tdx_collateral_window(cached).contains(now + self._margin):
            return encode_tdx_collateral(cached)
        self.fetches += 1
        fresh: TdxCollateralRecord | None = None
        exc_text = ""
        try:
            # one deadline for the whole fetch: a hung PCCS must not hold the report back for long
            with trio.fail_after(2 * self._timeout):
                async with httpx.AsyncClient(timeout=self._timeout, transport=self._transport) as client:
                    fresh = await fetch_tdx_collateral(quote, self._base, client)
            self._check(quote, fresh, now)
        except trio.TooSlowError:
            fresh, exc_text = None, f"no answer within {2 * self._timeout:.0f} s"
        except (CollateralFetchError, AttestationError) as exc:
            fresh, exc_text = None, str(exc)
        if fresh is None:
            self.failures += 1
            usable = cached is not None and tdx_collateral_window(cached).contains(now)
            log.warning("fetching TDX collateral (FMSPC %s) from %s FAILED: %s; %s", fmspc, self._base, exc_text,
                        "shipping the cached collateral until it expires" if usable else
                        "the report goes out WITHOUT collateral (testnet/mainnet requesters refuse it)")
            return encode_tdx_collateral(cached) if usable and cached is not None else b""
        self._store(path, fresh)
        window = tdx_collateral_window(fresh)
        log.info("TDX collateral for FMSPC %s from %s, valid until %s", fmspc, self._base,
                 window.next_update.isoformat())
        return encode_tdx_collateral(fresh)


def _verify_own(quote: bytes, record: TdxCollateralRecord, now: datetime) -> None:
    """What a requester will do: dcap-qvl over our quote with this collateral, at ``now``."""
    from .tdx import INTEL_SGX_ROOT_CA, _check_tcb

    _check_tcb(bytes(quote), record, INTEL_SGX_ROOT_CA, now)
