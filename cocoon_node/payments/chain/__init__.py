"""Chain adapters for payment channels: TON (pytoniq) and an EMULATED local chain for dev/tests."""

from cocoon_node.payments.chain.base import (
    Chain,
    ChainError,
    ChannelState,
    ChannelStatus,
    TxFailed,
    TxResult,
)

__all__ = ["Chain", "ChainError", "ChannelState", "ChannelStatus", "TxFailed", "TxResult"]
