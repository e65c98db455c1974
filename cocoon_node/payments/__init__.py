"""Payments: vouchers for TON payment channels, the chains they settle on, and the registry contract.

Data flows payer -> payee: a requester's :class:`RequesterPaymentMeter` signs vouchers (persisted first) that a
worker's :class:`WorkerPaymentMeter` checks against its credit window; :class:`Settlement` claims and closes
on chain, :class:`ChannelManager` opens, tops up and watches the payer's channels.

- :mod:`.voucher`: the channel's signed cells (voucher, close) and message bodies, bit for bit as the
  contract checks them, and the channel's address from its terms (:class:`ChannelParams`);
- :mod:`.contracts`: the committed contract code (contracts/build), its code hashes and exit codes;
- :mod:`.registry`: the registry contract in one place: owner update bodies, reading its policy, and the
  refresher that applies it to a requester's attestation gate;
- :mod:`.meter` (worker side, credit window; what payers owe is kept in :mod:`._ledger`) and :mod:`.payer`
  (requester side, voucher pacing): the metering of one inference stream, behind the port
  :mod:`cocoon_node.inference.port` declares;
- :mod:`.channels` (payer's channel lifecycle), :mod:`.settlement` (payee's claims and closes),
  :mod:`.store` (SQLite state, fsynced before anything is sent or served);
- :mod:`.chain`: the chain adapters (:class:`TonChain`, the EMULATED :class:`LocalChain`).
"""

from cocoon_node.payments.chain.base import Chain, ChainError, ChannelState, ChannelStatus, TxFailed, TxResult
from cocoon_node.payments.chain.local import LocalChain, serve_shared_chain
from cocoon_node.payments.chain.ton import TonChain
from cocoon_node.payments.channels import ChannelManager
from cocoon_node.payments.meter import PayerChannel, RequesterPaymentMeter, WorkerPaymentMeter
from cocoon_node.payments.registry import (
    RegistryPolicy,
    RegistryPolicyRefresher,
    merge_policy,
    read_registry_policy,
    registry_body,
)
from cocoon_node.payments.settlement import CHAIN_OP_TIMEOUT, Settlement
from cocoon_node.payments.store import PaymentStore
from cocoon_node.payments.voucher import (
    MAX_CHALLENGE_PERIOD,
    MAX_SEQNO,
    ChannelParams,
    SignedClose,
    SignedVoucher,
    VoucherError,
    public_key_bytes,
    sign_voucher,
)

__all__ = [
    "CHAIN_OP_TIMEOUT",
    "MAX_CHALLENGE_PERIOD",
    "MAX_SEQNO",
    "Chain",
    "ChainError",
    "ChannelManager",
    "ChannelParams",
    "ChannelState",
    "ChannelStatus",
    "LocalChain",
    "PayerChannel",
    "PaymentStore",
    "RegistryPolicy",
    "RegistryPolicyRefresher",
    "RequesterPaymentMeter",
    "Settlement",
    "SignedClose",
    "SignedVoucher",
    "TonChain",
    "TxFailed",
    "TxResult",
    "VoucherError",
    "WorkerPaymentMeter",
    "merge_policy",
    "public_key_bytes",
    "read_registry_policy",
    "registry_body",
    "serve_shared_chain",
    "sign_voucher",
]
