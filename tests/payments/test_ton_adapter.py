"""TonChain against a fake lite-client: what it sends and how it reads results (no network here)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio
from pytoniq import WalletV4R2
from pytoniq_core import Address, Cell

from cocoon_node.payments.chain.base import Chain, ChannelStatus
from cocoon_node.payments.chain.ton import TonChain
from cocoon_node.payments.voucher import sign_voucher, start_close_body
from tests.payments.conftest import TON, party_key

ME = "EQD3eLbcV60CnZbStVzPzYtPetz9_qDk2TYOnUqQ0g4CiqX9"
CHANNEL = "EQBmfLyUoeDLxIPtyj0mcG-ZtHjxObloMAwAldBJP-DhDBF2"


class FakeNet:
    """Executes every sent message at once with a canned exit code, like a very fast chain."""

    def __init__(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code
        self.sent: list[Any] = []
        self.txs: list[Any] = []
        self.address = Address(ME)

    # provider
    async def get_transactions(self, address: Address, count: int) -> list[Any]:
        return list(reversed(self.txs))[:count]

    async def get_account_state(self, address: Address) -> Any:
        return SimpleNamespace(balance=0, is_active=lambda: False)

    # wallet
    def create_wallet_internal_message(self, **kw: Any) -> Any:
        return WalletV4R2.create_wallet_internal_message(**kw)

    async def raw_transfer(self, msgs: list[Any]) -> None:
        (m,) = msgs
        self.sent.append(m)
        info = m.message.info
        body: Cell = m.message.body
        compute = SimpleNamespace(type_="vm", success=self.exit_code == 0, exit_code=self.exit_code)
        in_msg = SimpleNamespace(is_internal=True, info=SimpleNamespace(src=self.address, dest=info.dest), body=body)
        lt = 1000 + len(self.txs)
        self.txs.append(
            SimpleNamespace(
                lt=lt,
                now=0,
                in_msg=in_msg,
                description=SimpleNamespace(
                    compute_ph=compute, action=SimpleNamespace(success=True), aborted=self.exit_code != 0
                ),
            )
        )


async def test_ton_chain_sends_the_same_bodies_and_reads_exit_codes() -> None:
    payer = party_key("payer")
    v = sign_voucher(payer, 77, 2, TON)
    net = FakeNet()
    chain = TonChain(net, net, None, network="testnet")
    assert isinstance(chain, Chain)
    assert "TON testnet" in chain.label and chain.wallet_address == ME
    with trio.fail_after(10):
        r = await chain.claim(CHANNEL, v, value=50_000_000)
        assert r.success and r.exit_code == 0
        sent = net.sent[-1].message
        assert sent.body.hash == v.claim_body().hash
        assert sent.info.value_coins == 50_000_000
        assert sent.info.bounce is True
        assert sent.info.dest == Address(CHANNEL)

        net.exit_code = 110
        r = await chain.unilateral_close(CHANNEL, v)
        assert not r.success and r.error_name == "OVERDRAW"
        assert net.sent[-1].message.body.hash == start_close_body(v).hash

        st = await chain.get_channel_state(CHANNEL)
        assert st.status is ChannelStatus.CLOSED
