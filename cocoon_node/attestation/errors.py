"""Errors raised by attestation parsing and verification.

Every failure carries a ``check`` name so callers (and tests) can tell *which* guarantee broke
without parsing message text.
"""

from __future__ import annotations


class AttestationError(Exception):
    """An attestation check failed; ``check`` names the failed check (e.g. ``"quote_signature"``)."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message


class QuoteFormatError(AttestationError):
    """A TDX quote could not be parsed (truncated, wrong version or type, bad lengths)."""

    def __init__(self, message: str) -> None:
        super().__init__("format", message)
