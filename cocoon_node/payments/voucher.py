"""Payment-channel vouchers and message bodies, bit-for-bit as contracts/src/payment_channel.tolk checks them.

A voucher is the payer's signed promise "the payee has earned ``cumulative`` nanotons in channel
``channel_id``; this is voucher ``seqno``". Vouchers are cumulative, so the payee keeps just the one with the
highest amount. The contract ranks vouchers by amount only (a payer could sign any seqno); the seqno keeps
the off-chain stream ordered and names a voucher in the store.
The contract verifies Ed25519 signatures over the *representation hash* of a small cell, so this
module builds exactly those cells (layouts in contracts/README.md) with pytoniq-core; a test deploys
the compiled contract on the emulated chain and checks that Python-signed vouchers pay out.

Every signed cell starts with a 32-bit domain tag and the channel id, so a signature cannot be
replayed in another channel or reused as a different kind of message. The registry contract's bodies are
in :mod:`cocoon_node.payments.registry`, the committed code and exit codes in :mod:`.contracts`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pytoniq_core import Address, Builder, Cell, StateInit, begin_cell

from cocoon_node.payments.contracts import contract_code

# ---- constants shared with the contract (contracts/lib/cocoon.mjs, contracts/README.md) -------
TAG_VOUCHER = 0x5C0CF001
TAG_CLOSE = 0x5C0CF002

OP_TOP_UP = 0x5C0C0001
OP_CLAIM = 0x5C0C0002
OP_COOPERATIVE_CLOSE = 0x5C0C0003
OP_START_CLOSE = 0x5C0C0004
OP_CHALLENGE = 0x5C0C0005
OP_FINISH = 0x5C0C0006
OP_CLAIM_PAYOUT = 0x5C0C0010
OP_CLOSE_PAYOUT = 0x5C0C0011
OP_REFUND = 0x5C0C0012
OP_EXCESS = 0x5C0C0013

#: Vouchers travel as uint64 on our wire; all TON ever minted fits far below this.
MAX_CUMULATIVE = 2**63 - 1
MAX_SEQNO = 2**64 - 1
MAX_CHANNEL_ID = 2**256 - 1

#: Longest challenge period the channel contract accepts (MAX_CHALLENGE_PERIOD there): 30 days.
MAX_CHALLENGE_PERIOD = 30 * 24 * 3600
#: A deposit must leave the channel this much above what it may still pay out (MIN_GAS_RESERVE there),
#: so a deploy must carry at least this on top of the deposit.
MIN_GAS_RESERVE = 20_000_000  # 0.02 TON


class VoucherError(ValueError):
    """A voucher is malformed, forged, for another channel, or does not move forward."""


def new_channel_id() -> int:
    """A fresh random 256-bit channel id. Never reuse one: vouchers are bound to the id, not the address."""
    return secrets.randbits(256)


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """Raw 32-byte Ed25519 public key, as stored in the contract (uint256, big-endian)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _check_range(name: str, value: int, upper: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= upper:
        raise VoucherError(f"{name} out of range: {value!r}")


# ---- signed cells ------------------------------------------------------------------------------


def voucher_cell(channel_id: int, seqno: int, cumulative: int, *, tag: int = TAG_VOUCHER) -> Cell:
    """The cell the payer signs: ``tag:uint32 channel_id:uint256 seqno:uint64 cumulative:coins``."""
    _check_range("channel_id", channel_id, MAX_CHANNEL_ID)
    _check_range("seqno", seqno, MAX_SEQNO)
    _check_range("cumulative", cumulative, MAX_CUMULATIVE)
    return (
        begin_cell()
        .store_uint(tag, 32)
        .store_uint(channel_id, 256)
        .store_uint(seqno, 64)
        .store_coins(cumulative)
        .end_cell()
    )


def close_cell(channel_id: int, cumulative: int, *, tag: int = TAG_CLOSE) -> Cell:
    """The cell both parties sign to close cooperatively: ``tag:uint32 channel_id:uint256 cumulative:coins``."""
    _check_range("channel_id", channel_id, MAX_CHANNEL_ID)
    _check_range("cumulative", cumulative, MAX_CUMULATIVE)
    return begin_cell().store_uint(tag, 32).store_uint(channel_id, 256).store_coins(cumulative).end_cell()


def sign_cell(private_key: Ed25519PrivateKey, cell: Cell) -> bytes:
    """Ed25519 over the cell's representation hash — what the TVM's CHKSIGNU checks."""
    return private_key.sign(cell.hash)


def verify_cell(public_key: bytes, cell: Cell, signature: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s signature of ``cell``'s hash."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, cell.hash)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SignedVoucher:
    """A payer-signed voucher: what the payee stores, sends on our wire, and presents on chain."""

    channel_id: int
    seqno: int
    cumulative: int
    signature: bytes

    def cell(self) -> Cell:
        """The signed voucher cell (unsigned fields only)."""
        return voucher_cell(self.channel_id, self.seqno, self.cumulative)

    def verify(self, payer_public_key: bytes) -> bool:
        """True when the payer key signed exactly these fields."""
        try:
            cell = self.cell()
        except VoucherError:
            return False
        return verify_cell(payer_public_key, cell, self.signature)

    def store(self, b: Builder) -> Builder:
        """Appends the contract's ``SignedVoucher`` struct: ``signature:bits512 ^voucher_cell``."""
        if len(self.signature) != 64:
            raise VoucherError("signature must be 64 bytes")
        return b.store_bytes(self.signature).store_ref(self.cell())

    def to_cell(self) -> Cell:
        """The ``SignedVoucher`` struct as its own cell (the ref inside a start-close body)."""
        return self.store(begin_cell()).end_cell()

    def to_boc(self) -> bytes:
        """Self-contained binary form (BoC of :meth:`to_cell`)."""
        return self.to_cell().to_boc()

    @classmethod
    def from_boc(cls, data: bytes) -> SignedVoucher:
        """Parses :meth:`to_boc` output; rejects wrong tags and trailing data."""
        try:
            root = Cell.one_from_boc(data)
            s = root.begin_parse()
            signature = s.load_bytes(64)
            inner = s.load_ref()
            if s.remaining_bits or s.remaining_refs:
                raise VoucherError("trailing data after voucher")
            v = inner.begin_parse()
            tag = v.load_uint(32)
            channel_id = v.load_uint(256)
            seqno = v.load_uint(64)
            cumulative = v.load_coins()
            if v.remaining_bits or v.remaining_refs:
                raise VoucherError("trailing data in voucher cell")
        except VoucherError:
            raise
        except Exception as e:  # pytoniq raises assorted errors on short or malformed cells
            raise VoucherError(f"malformed voucher BoC: {e}") from e
        if tag != TAG_VOUCHER:
            raise VoucherError(f"not a voucher (tag {tag:#x})")
        return cls(channel_id=channel_id, seqno=seqno, cumulative=cumulative or 0, signature=signature)

    def to_wire(self) -> dict[str, int | bytes]:
        """Plain fields for our msgpack/cbor wire (channel id as 32 bytes: it does not fit in uint64)."""
        return {
            "channel_id": self.channel_id.to_bytes(32, "big"),
            "seqno": self.seqno,
            "cumulative": self.cumulative,
            "signature": self.signature,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> SignedVoucher:
        """Inverse of :meth:`to_wire`; also accepts hex strings. Validates ranges, not the signature."""
        try:
            cid = d["channel_id"]
            sig = d["signature"]
            channel_id = int.from_bytes(cid, "big") if isinstance(cid, bytes) else int(str(cid), 16)
            signature = sig if isinstance(sig, bytes) else bytes.fromhex(str(sig))
            seqno = d["seqno"]
            cumulative = d["cumulative"]
        except (KeyError, ValueError, TypeError) as e:
            raise VoucherError(f"malformed wire voucher: {e}") from e
        _check_range("channel_id", channel_id, MAX_CHANNEL_ID)
        _check_range("seqno", seqno, MAX_SEQNO)
        _check_range("cumulative", cumulative, MAX_CUMULATIVE)
        if len(signature) != 64:
            raise VoucherError("signature must be 64 bytes")
        return cls(channel_id=channel_id, seqno=seqno, cumulative=cumulative, signature=signature)

    def to_json(self) -> dict[str, int | str]:
        """JSON-safe fields (hex strings for the 256-bit id and the signature)."""
        return {
            "channel_id": f"{self.channel_id:064x}",
            "seqno": self.seqno,
            "cumulative": self.cumulative,
            "signature": self.signature.hex(),
        }

    def claim_body(self, query_id: int = 0) -> Cell:
        """Body of the payee's ``claim`` message."""
        return self.store(begin_cell().store_uint(OP_CLAIM, 32).store_uint(query_id, 64)).end_cell()

    def challenge_body(self, query_id: int = 0) -> Cell:
        """Body of a ``challenge`` during the close period."""
        return self.store(begin_cell().store_uint(OP_CHALLENGE, 32).store_uint(query_id, 64)).end_cell()

    def start_close_body(self, query_id: int = 0) -> Cell:
        """Body of a unilateral close that presents this voucher."""
        return start_close_body(self, query_id)


def sign_voucher(payer_key: Ed25519PrivateKey, channel_id: int, seqno: int, cumulative: int) -> SignedVoucher:
    """Signs a voucher as the payer."""
    cell = voucher_cell(channel_id, seqno, cumulative)
    return SignedVoucher(channel_id, seqno, cumulative, sign_cell(payer_key, cell))


def check_next_voucher(
    new: SignedVoucher,
    *,
    channel_id: int,
    payer_public_key: bytes,
    deposit: int,
    newest: SignedVoucher | None = None,
) -> None:
    """Payee-side check of the next voucher on the stream: raise VoucherError unless it is acceptable.

    Right channel, payer signature, not beyond the deposit (as on chain), and, off chain only, seqno
    strictly up with the amount never down: an honest payer signs in order, so a higher seqno for less is
    refused here and the payee keeps its best voucher. The contract itself ranks by amount alone, so that
    best voucher wins on chain whatever seqnos the payer signs afterwards.
    """
    if new.channel_id != channel_id:
        raise VoucherError("voucher is for another channel")
    if not new.verify(payer_public_key):
        raise VoucherError("bad payer signature")
    if newest is not None:
        if new.seqno <= newest.seqno:
            raise VoucherError(f"stale seqno {new.seqno} <= {newest.seqno}")
        if new.cumulative < newest.cumulative:
            raise VoucherError(f"amount goes backwards {new.cumulative} < {newest.cumulative}")
    if new.cumulative > deposit:
        raise VoucherError(f"overdraw: {new.cumulative} > deposit {deposit}")


@dataclass(frozen=True, slots=True)
class SignedClose:
    """Cooperative close terms signed by both parties (either may submit it)."""

    channel_id: int
    cumulative: int
    payer_signature: bytes
    payee_signature: bytes

    def cell(self) -> Cell:
        """The close cell both signatures cover."""
        return close_cell(self.channel_id, self.cumulative)

    def verify(self, payer_public_key: bytes, payee_public_key: bytes) -> bool:
        """True when both parties signed exactly these terms."""
        cell = self.cell()
        return verify_cell(payer_public_key, cell, self.payer_signature) and verify_cell(
            payee_public_key, cell, self.payee_signature
        )

    def body(self, query_id: int = 0) -> Cell:
        """Body of ``cooperative_close``: ``op qid payer_sig:bits512 ^[payee_sig:bits512] ^close_cell``."""
        return cooperative_close_body(self.cell(), self.payer_signature, self.payee_signature, query_id)


def sign_close(key: Ed25519PrivateKey, channel_id: int, cumulative: int) -> bytes:
    """One party's signature over the close terms."""
    return sign_cell(key, close_cell(channel_id, cumulative))


# ---- message bodies ----------------------------------------------------------------------------


def top_up_body(amount: int, query_id: int = 0) -> Cell:
    """Deposit / top-up: ``op qid amount:coins`` — the message must carry at least ``amount``."""
    return begin_cell().store_uint(OP_TOP_UP, 32).store_uint(query_id, 64).store_coins(amount).end_cell()


def start_close_body(voucher: SignedVoucher | None, query_id: int = 0) -> Cell:
    """Unilateral close: ``op qid (Maybe ^SignedVoucher)``; ``None`` only for the payer."""
    b = begin_cell().store_uint(OP_START_CLOSE, 32).store_uint(query_id, 64)
    if voucher is None:
        b.store_bit(0)
    else:
        b.store_bit(1).store_ref(voucher.to_cell())
    return b.end_cell()


def challenge_body(voucher: SignedVoucher, query_id: int = 0) -> Cell:
    """Challenge during the close period with a newer voucher."""
    return voucher.challenge_body(query_id)


def claim_body(voucher: SignedVoucher, query_id: int = 0) -> Cell:
    """Payee claim without closing."""
    return voucher.claim_body(query_id)


def finish_body(query_id: int = 0) -> Cell:
    """Finish after the challenge period: pays out and destroys the channel."""
    return begin_cell().store_uint(OP_FINISH, 32).store_uint(query_id, 64).end_cell()


def cooperative_close_body(terms: Cell, payer_signature: bytes, payee_signature: bytes, query_id: int = 0) -> Cell:
    """Cooperative close body from a (possibly foreign) terms cell and two signatures."""
    if len(payer_signature) != 64 or len(payee_signature) != 64:
        raise VoucherError("signatures must be 64 bytes")
    return (
        begin_cell()
        .store_uint(OP_COOPERATIVE_CLOSE, 32)
        .store_uint(query_id, 64)
        .store_bytes(payer_signature)
        .store_ref(begin_cell().store_bytes(payee_signature).end_cell())
        .store_ref(terms)
        .end_cell()
    )


# ---- channel deployment ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelParams:
    """Immutable terms of one channel; the channel address is derived from them."""

    payer_key: bytes
    payee_key: bytes
    payer: str
    payee: str
    channel_id: int
    challenge_period: int

    def to_json(self) -> dict[str, str | int]:
        """Fields as the local-chain sidecar expects them."""
        return {
            "payer_key": self.payer_key.hex(),
            "payee_key": self.payee_key.hex(),
            "payer": self.payer,
            "payee": self.payee,
            "channel_id": str(self.channel_id),
            "challenge_period": self.challenge_period,
        }


def check_channel_terms(params: ChannelParams, deposit: int, gas: int) -> None:
    """Refuse a deploy the contract would refuse (or that could not close): raise VoucherError.

    The challenge period must fit ``MAX_CHALLENGE_PERIOD`` (beyond it ``now + period`` may overflow the
    contract's uint32 deadline), and the value sent beside the deposit must cover ``MIN_GAS_RESERVE``.
    """
    _check_range("challenge_period", params.challenge_period, MAX_CHALLENGE_PERIOD)
    if not isinstance(deposit, int) or deposit <= 0:
        raise VoucherError(f"deposit must be positive: {deposit!r}")
    if not isinstance(gas, int) or gas < MIN_GAS_RESERVE:
        raise VoucherError(f"deploy gas {gas!r} below the channel's minimum reserve {MIN_GAS_RESERVE}")


def channel_init_data(p: ChannelParams) -> Cell:
    """Canonical initial storage: all mutable fields zero (a payee must insist on exactly this)."""
    if len(p.payer_key) != 32 or len(p.payee_key) != 32:
        raise ValueError("keys must be 32 bytes")
    keys = begin_cell().store_bytes(p.payer_key).store_bytes(p.payee_key).end_cell()
    addrs = begin_cell().store_address(Address(p.payer)).store_address(Address(p.payee)).end_cell()
    return (
        begin_cell()
        .store_uint(0, 2)  # state OPEN
        .store_uint(0, 2)  # close initiator
        .store_uint(p.channel_id, 256)
        .store_uint(p.challenge_period, 32)
        .store_coins(0)  # deposit
        .store_coins(0)  # claimed
        .store_uint(0, 64)  # seqno
        .store_coins(0)  # committed
        .store_uint(0, 32)  # close deadline
        .store_ref(keys)
        .store_ref(addrs)
        .end_cell()
    )


def channel_state_init(p: ChannelParams, code: Cell | None = None) -> StateInit:
    """StateInit (code + canonical data) that deploys this channel."""
    return StateInit(code=code or contract_code("payment_channel"), data=channel_init_data(p))


def channel_address(p: ChannelParams, code: Cell | None = None, workchain: int = 0) -> str:
    """Address the channel with these terms must have; a payee compares it with what the payer names."""
    si = channel_state_init(p, code)
    return Address((workchain, si.serialize().hash)).to_str(is_user_friendly=True, is_url_safe=True, is_bounceable=True)
