"""Chain adapters for payment channels: TON (pytoniq) and an EMULATED local chain for dev/tests.

- :mod:`.base`: the :class:`Chain` protocol every adapter implements, channel state, errors, the close poller;
- :mod:`.ton`: :class:`~.ton.TonChain` on mainnet/testnet (pytoniq on a private asyncio thread), and the
  get-method stack decoders the registry reader shares;
- :mod:`.local`: the EMULATED :class:`~.local.LocalChain` (the same contract code in ``@ton/sandbox``).
"""

from cocoon_node.payments.chain.base import (
    Chain,
    ChainError,
    ChannelState,
    ChannelStatus,
    TxFailed,
    TxResult,
)

__all__ = ["Chain", "ChainError", "ChannelState", "ChannelStatus", "TxFailed", "TxResult"]
