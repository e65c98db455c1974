"""What the node needs from a chain, independent of whether it is TON or the local emulator.

Each ``Chain`` object acts for one wallet (the node's own account): operations are sent from it.
Results are reported as :class:`TxResult`; a rejected operation is not an exception, because
the node must be able to tell "the contract said no (exit code N)" from "the chain is unreachable".
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import trio

from cocoon_node.payments.contracts import EXIT_CODES
from cocoon_node.payments.voucher import ChannelParams, SignedClose, SignedVoucher

#: Value attached to claim / close / challenge / finish to pay their gas; the unused part returns.
DEFAULT_OP_VALUE = 50_000_000  # 0.05 TON
#: Extra value sent with a deposit on top of the deposited amount; stays in the channel as gas buffer
#: and returns to the payer at close.
DEFAULT_DEPLOY_GAS = 100_000_000  # 0.1 TON


class ChainError(Exception):
    """The chain could not be reached or answered nonsense (not a contract rejection)."""


class TxFailed(ChainError):
    """A transaction was rejected by the contract (raised only by :meth:`TxResult.raise_for_status`)."""

    def __init__(self, result: TxResult) -> None:
        super().__init__(f"transaction failed: exit code {result.exit_code} ({result.error_name})")
        self.result = result


class ChannelStatus(enum.StrEnum):
    """Lifecycle of a channel; CLOSED means the account no longer exists."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ChannelState:
    """On-chain view of one channel (amounts in nanotons)."""

    address: str
    status: ChannelStatus
    balance: int
    deposit: int = 0
    claimed: int = 0
    seqno: int = 0
    committed: int = 0
    close_deadline: int = 0
    close_initiator: int = 0  # 0 none, 1 payer, 2 payee
    channel_id: int = 0
    challenge_period: int = 0
    payer_key: bytes = b""
    payee_key: bytes = b""
    payer: str = ""
    payee: str = ""

    @property
    def owed_to_payee(self) -> int:
        """What finish would pay the payee now."""
        return max(0, self.committed - self.claimed)


@dataclass(frozen=True, slots=True)
class TxResult:
    """Outcome of one operation on the destination contract."""

    success: bool
    exit_code: int | None
    transactions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def error_name(self) -> str:
        """Symbolic name of the exit code (contracts/README.md)."""
        if self.exit_code is None:
            return "NO_TRANSACTION"
        return EXIT_CODES.get(self.exit_code, "OK" if self.exit_code == 0 else str(self.exit_code))

    def raise_for_status(self) -> TxResult:
        """Returns self, or raises :class:`TxFailed`."""
        if not self.success:
            raise TxFailed(self)
        return self


@runtime_checkable
class Chain(Protocol):
    """Payment-channel operations from one wallet. All methods are trio-async."""

    label: str

    @property
    def wallet_address(self) -> str:
        """Address of the wallet this object sends from."""
        ...

    async def now(self) -> int:
        """Chain time (unix seconds) that challenge periods are measured in."""
        ...

    async def advance_time(self, seconds: int) -> int:
        """Move the clock forward (emulated chains only; real chains raise NotImplementedError)."""
        ...

    async def get_balance(self, address: str) -> int:
        """Balance of any account in nanotons (0 if it does not exist)."""
        ...

    async def get_channel_state(self, address: str) -> ChannelState:
        """Current state of a channel (CLOSED when the account is gone)."""
        ...

    async def open_channel(self, params: ChannelParams, deposit: int, *, gas: int = DEFAULT_DEPLOY_GAS) -> str:
        """Deploy a channel from this wallet (the payer) with ``deposit``; returns its address.

        Raises :class:`~cocoon_node.payments.voucher.VoucherError` before sending anything when the contract
        would refuse the terms (challenge period above the maximum, ``gas`` below the minimum reserve)."""
        ...

    async def top_up(self, address: str, amount: int, *, gas: int = DEFAULT_DEPLOY_GAS) -> TxResult:
        """Payer adds ``amount`` to the deposit."""
        ...

    async def claim(self, address: str, voucher: SignedVoucher, *, value: int = DEFAULT_OP_VALUE) -> TxResult:
        """Payee collects ``voucher.cumulative - claimed`` without closing."""
        ...

    async def cooperative_close(self, address: str, close: SignedClose, *, value: int = DEFAULT_OP_VALUE) -> TxResult:
        """Either party submits terms signed by both; pays out and destroys the channel."""
        ...

    async def unilateral_close(
        self, address: str, voucher: SignedVoucher | None, *, value: int = DEFAULT_OP_VALUE
    ) -> TxResult:
        """Start the challenge period (payee must present a voucher; payer may pass None). A voucher below
        what the chain already committed changes nothing: vouchers rank by amount, not seqno."""
        ...

    async def challenge(self, address: str, voucher: SignedVoucher, *, value: int = DEFAULT_OP_VALUE) -> TxResult:
        """Present a voucher with a higher amount than the committed one during the challenge period."""
        ...

    async def finish(self, address: str, *, value: int = DEFAULT_OP_VALUE) -> TxResult:
        """After the period: pay the payee what is owed, the payer the rest, destroy the channel."""
        ...

    def watch_closes(self, addresses: Iterable[str], *, poll_interval: float = 1.0) -> AsyncIterator[ChannelState]:
        """Yield each watched channel once when seen CLOSING or CLOSED; ends when all have (or on cancel)."""
        ...


def parse_channel_state(address: str, d: dict[str, Any]) -> ChannelState:
    """Builds a ChannelState from the sidecar's / adapter's plain dict."""
    status = ChannelStatus(d["status"])
    if status is ChannelStatus.CLOSED:
        return ChannelState(address=address, status=status, balance=int(d.get("balance", 0)))
    return ChannelState(
        address=address,
        status=status,
        balance=int(d["balance"]),
        deposit=int(d["deposit"]),
        claimed=int(d["claimed"]),
        seqno=int(d["seqno"]),
        committed=int(d["committed"]),
        close_deadline=int(d["close_deadline"]),
        close_initiator=int(d["close_initiator"]),
        channel_id=int(d["channel_id"]),
        challenge_period=int(d["challenge_period"]),
        payer_key=bytes.fromhex(d["payer_key"]),
        payee_key=bytes.fromhex(d["payee_key"]),
        payer=str(d["payer"]),
        payee=str(d["payee"]),
    )


async def poll_closes(chain: Chain, addresses: Iterable[str], poll_interval: float) -> AsyncIterator[ChannelState]:
    """Shared watch_closes loop: polls each address, yields it once on leaving OPEN; ends when all have."""
    pending = list(dict.fromkeys(addresses))
    while pending:
        for addr in list(pending):
            st = await chain.get_channel_state(addr)
            if st.status is not ChannelStatus.OPEN:
                pending.remove(addr)
                yield st
        if pending:
            await trio.sleep(poll_interval)
