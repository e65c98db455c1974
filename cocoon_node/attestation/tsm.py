"""Obtain a TDX quote inside a TD through Linux configfs-tsm (``/sys/kernel/config/tsm/report``).

The kernel ABI (Documentation/ABI/testing/configfs-tsm): mkdir a report entry, write up to 64 bytes to
``inblob``, read ``outblob`` (the quote), and check ``generation`` to be sure no other writer changed
the entry between our write and our read; ``provider`` names the backend ("tdx_guest" on TDX,
"sev_guest" on SEV-SNP, where ``outblob`` is the raw attestation report and ``auxblob`` the host's
certificate table, empty when the host supplies none). rmdir releases the entry. The calls block, so from
Trio run them in ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ._snp_certtable import SnpCertTable, parse_snp_cert_table

DEFAULT_TSM_REPORT_DIR = Path("/sys/kernel/config/tsm/report")
TDX_PROVIDER = "tdx_guest"
SNP_PROVIDER = "sev_guest"


class TsmError(RuntimeError):
    """configfs-tsm is absent, belongs to another TEE, or the report exchange failed."""


class ConfigfsTsm:
    """A configfs-tsm report directory; ``root`` is injectable so tests can use a fake tree.

    The filesystem primitives are methods so a test can emulate the kernel's side (configfs
    populates a new entry's files on mkdir, which a plain directory does not).
    """

    def __init__(self, root: Path | str = DEFAULT_TSM_REPORT_DIR) -> None:
        self.root = Path(root)

    def get_quote(self, report_data: bytes) -> bytes:
        """Return the provider's quote over ``report_data`` (exactly 64 bytes)."""
        return self._exchange(report_data, TDX_PROVIDER, aux=False)[0]

    def get_snp_report(self, report_data: bytes) -> tuple[bytes, bytes]:
        """SEV-SNP: the attestation report over ``report_data`` and the certificate table (may be empty)."""
        return self._exchange(report_data, SNP_PROVIDER, aux=True)

    def _exchange(self, report_data: bytes, want_provider: str, *, aux: bool) -> tuple[bytes, bytes]:
        if len(report_data) != 64:
            raise TsmError(f"report data must be 64 bytes, got {len(report_data)}")
        if not self.root.is_dir():
            raise TsmError(
                f"configfs-tsm not available: {self.root} does not exist (not a TDX or SEV-SNP guest, kernel "
                "without CONFIG_TSM_REPORTS, or configfs not mounted at /sys/kernel/config)"
            )
        entry = self.root / f"cocoon-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self._mkdir(entry)
        except OSError as exc:
            raise TsmError(f"cannot create report entry {entry}: {exc}") from exc
        try:
            provider = self._read(entry / "provider").decode("ascii", "replace").strip()
            if provider != want_provider:
                raise TsmError(f"configfs-tsm provider is {provider!r}, not {want_provider!r}")
            before = self._generation(entry)
            self._write(entry / "inblob", report_data)
            quote = self._read(entry / "outblob")
            auxblob = self._read(entry / "auxblob") if aux else b""
            after = self._generation(entry)
            if after != before + 1:
                raise TsmError(f"report entry was modified concurrently (generation {before} -> {after})")
            if not quote:
                raise TsmError("provider returned an empty quote")
            return quote, auxblob
        except OSError as exc:
            raise TsmError(f"configfs-tsm report exchange failed: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                self._rmdir(entry)

    def _generation(self, entry: Path) -> int:
        raw = self._read(entry / "generation").strip()
        try:
            return int(raw)
        except ValueError as exc:
            raise TsmError(f"bad generation value {raw!r}") from exc

    # Filesystem primitives, overridden by tests.
    def _mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def _rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def _read(self, path: Path) -> bytes:
        return path.read_bytes()

    def _write(self, path: Path, data: bytes) -> None:
        # One write() call: configfs binary attributes take the whole blob at once.
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def get_tdx_quote(report_data: bytes, *, tsm_root: Path | str = DEFAULT_TSM_REPORT_DIR) -> bytes:
    """Quote over ``report_data`` from this TD via configfs-tsm; raises TsmError where absent."""
    return ConfigfsTsm(tsm_root).get_quote(report_data)


@dataclass(frozen=True)
class SnpEvidence:
    """What an SEV-SNP guest gets from configfs-tsm: the raw report and the host's certificate table."""

    report: bytes
    cert_table: bytes

    def certificates(self) -> SnpCertTable:
        """The table's certificates (none when the host supplied no table: fetch the VCEK from AMD's KDS)."""
        return parse_snp_cert_table(self.cert_table) if self.cert_table else SnpCertTable()


def get_snp_evidence(report_data: bytes, *, tsm_root: Path | str = DEFAULT_TSM_REPORT_DIR) -> SnpEvidence:
    """SEV-SNP report over ``report_data`` from this guest via configfs-tsm; raises TsmError where absent."""
    report, table = ConfigfsTsm(tsm_root).get_snp_report(report_data)
    return SnpEvidence(report, table)
