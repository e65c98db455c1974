"""The worker meter's ledger: what each payer key and each of its channels owes this worker.

:class:`~cocoon_node.payments.meter.WorkerPaymentMeter` decides (admit, wait, refuse, forgive); these records
only hold the sums it decides on, so the credit window's arithmetic (exposure, unpaid, debt) reads in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from cocoon_node.payments.voucher import ChannelParams, SignedVoucher


@dataclass
class _PayerBook:
    """What one payer key owes this worker over all its channels; ``credit_window`` bounds the sum."""

    key: bytes
    accounts: dict[str, _PayeeAccount] = field(default_factory=dict)
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def exposure(self) -> int:
        """Unpaid nanotons counted against the window (excused tails not included)."""
        return sum(max(a.debt - a.forgiven, 0) for a in self.accounts.values())

    @property
    def unpaid(self) -> int:
        """Everything served and not paid, excused tails included: what the worker would lose now."""
        return sum(max(a.debt, 0) for a in self.accounts.values())

    @property
    def forgiven(self) -> int:
        return sum(a.forgiven for a in self.accounts.values())

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@dataclass
class _PayeeAccount:
    address: str
    params: ChannelParams
    deposit: int
    newest: SignedVoucher | None
    served: int
    payer: _PayerBook
    checked_at: float = 0.0  # trio time of the last on-chain status check
    vouchers: int = 0        # vouchers accepted on this channel since it was loaded
    forgiven: int = 0        # unpaid tail excused from the window (never more than the debt)
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def paid(self) -> int:
        return self.newest.cumulative if self.newest else 0

    @property
    def debt(self) -> int:
        return self.served - self.paid

    def notify(self) -> None:
        self.payer.notify()


@dataclass
class _Req:
    account: _PayeeAccount
    prompt_tokens: int
    completion_tokens: int = 0
    amount: int = 0
    # What the channel had served when this request's first completion token was charged: a voucher beyond it
    # paid for this request's completion, the mark of a payer that pays (prompt-only payers never pass it).
    completion_mark: int | None = None
    payment_timed_out: bool = False  # ended while waiting for a voucher (timed out or cancelled)


@dataclass
class WorkerMeterStats:
    """Counters for tests and metrics."""

    admitted: int = 0
    refused: int = 0
    vouchers: int = 0
    stale_vouchers: int = 0
    rejected_vouchers: int = 0
    payment_timeouts: int = 0
    ended_channel_refusals: int = 0  # requests refused (or stopped) because their channel is closing/closed
    max_payer_exposure: int = 0      # the largest unpaid amount (excused tails included) any payer reached
