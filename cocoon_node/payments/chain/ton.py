"""TON adapter for payment channels, over pytoniq's lite-client (mainnet or testnet).

pytoniq is asyncio-only while the node runs on trio, so this adapter owns a private asyncio event
loop on one background thread and hands coroutines to it (:class:`_AsyncioThread`). Message bodies
and the channel StateInit come from :mod:`cocoon_node.payments.voucher`, the same code the emulated
local chain uses — that is what the offline tests check; nothing here has run against a real
network from this repository's CI (no internet there).

Sending is fire-and-confirm: the wallet sends an external message, then we poll the destination's
transactions until one carrying our exact body shows up, and report its compute-phase result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import trio
from pytoniq_core import Address, Cell, Slice, StateInit

from cocoon_node.payments.chain.base import (
    DEFAULT_DEPLOY_GAS,
    DEFAULT_OP_VALUE,
    ChainError,
    ChannelState,
    ChannelStatus,
    TxResult,
    poll_closes,
)
from cocoon_node.payments.voucher import (
    ChannelParams,
    SignedClose,
    SignedVoucher,
    channel_address,
    channel_state_init,
    check_channel_terms,
    finish_body,
    start_close_body,
    top_up_body,
)

T = TypeVar("T")

Network = Literal["mainnet", "testnet"]

#: How long to wait for our message to be executed by the destination before giving up.
CONFIRM_TIMEOUT = 180.0
CONFIRM_POLL = 3.0


class _AsyncioThread:
    """A private asyncio loop on a daemon thread; trio code awaits coroutines run on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pytoniq-asyncio", daemon=True)
        self._thread.start()

    async def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``make()`` on the asyncio loop; cancelling the trio side cancels the asyncio task."""
        fut = asyncio.run_coroutine_threadsafe(make(), self.loop)
        try:
            # trio-typing's stale stubs lack abandon_on_cancel (trio >= 0.23 has it)
            return await trio.to_thread.run_sync(fut.result, abandon_on_cancel=True)  # type: ignore[call-arg]
        except trio.Cancelled:
            fut.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


def _to_nacl_secret(private_key: bytes) -> bytes:
    """pytoniq wants libsodium's 64-byte secret key; accept the 32-byte Ed25519 seed too."""
    if len(private_key) == 64:
        return private_key
    if len(private_key) != 32:
        raise ValueError("private key must be a 32-byte Ed25519 seed or a 64-byte libsodium secret key")
    from nacl.bindings import crypto_sign_seed_keypair

    _, sk = crypto_sign_seed_keypair(private_key)
    return bytes(sk)


def _fmt(addr: Address | str) -> str:
    a = Address(addr) if isinstance(addr, str) else addr
    return a.to_str(is_user_friendly=True, is_url_safe=True, is_bounceable=True)


def stack_int(v: Any) -> int:
    """An integer get-method result (pytoniq gives ints, bools for -1/0 flags)."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    raise ChainError(f"expected int on stack, got {type(v).__name__}")


def stack_address(v: Any) -> str:
    """An address get-method result (an Address, or a slice/cell holding one) in user-friendly form."""
    if isinstance(v, Address):
        return _fmt(v)
    if isinstance(v, Slice | Cell):
        a = (v if isinstance(v, Slice) else v.begin_parse()).load_address()
        if isinstance(a, Address):
            return _fmt(a)
    raise ChainError(f"expected address on stack, got {type(v).__name__}")


def channel_state_from_stacks(address: str, balance: int, state: list[Any], parties: list[Any]) -> ChannelState:
    """Decode ``get_channel_state`` and ``get_parties`` get-method results (offline-testable)."""
    if len(state) != 7 or len(parties) != 6:
        raise ChainError("unexpected get-method result shape")
    st = [stack_int(x) for x in state]
    return ChannelState(
        address=address,
        status=ChannelStatus.OPEN if st[0] == 0 else ChannelStatus.CLOSING,
        balance=balance,
        deposit=st[1],
        claimed=st[2],
        seqno=st[3],
        committed=st[4],
        close_deadline=st[5],
        close_initiator=st[6],
        channel_id=stack_int(parties[0]),
        challenge_period=stack_int(parties[1]),
        payer_key=stack_int(parties[2]).to_bytes(32, "big"),
        payee_key=stack_int(parties[3]).to_bytes(32, "big"),
        payer=stack_address(parties[4]),
        payee=stack_address(parties[5]),
    )


class TonChain:
    """:class:`~cocoon_node.payments.chain.base.Chain` on a real TON network via pytoniq.

    ``provider`` is a started ``pytoniq.LiteBalancer`` (or anything with the same methods) and
    ``wallet`` a pytoniq wallet holding our private key; both live on ``bridge``'s asyncio loop.
    Use :meth:`connect` rather than the constructor.
    """

    label: str

    def __init__(self, provider: Any, wallet: Any, bridge: _AsyncioThread | None, *, network: str) -> None:
        self._provider = provider
        self._wallet = wallet
        self._bridge = bridge
        self.network = network
        self.label = f"TON {network} (pytoniq lite-client)"
        self._address = _fmt(wallet.address)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        private_key: bytes,
        *,
        network: Network = "testnet",
        config: dict[str, Any] | None = None,
        wallet_version: Literal["v3r2", "v4r2", "v5r1"] = "v4r2",
        trust_level: int = 2,
    ) -> AsyncIterator[TonChain]:
        """Connect to ``network`` (global config fetched from ton.org unless ``config`` is given)."""
        from pytoniq import LiteBalancer, WalletV4R2, WalletV5R1
        from pytoniq.contract.wallets.wallet import BaseWallet

        bridge = _AsyncioThread()
        secret = _to_nacl_secret(private_key)
        try:

            async def _start() -> tuple[Any, Any]:
                if config is not None:
                    provider = LiteBalancer.from_config(config, trust_level=trust_level)
                elif network == "mainnet":
                    provider = LiteBalancer.from_mainnet_config(trust_level=trust_level)
                else:
                    provider = LiteBalancer.from_testnet_config(trust_level=trust_level)
                await provider.start_up()
                if wallet_version == "v5r1":
                    wallet = await WalletV5R1.from_private_key(provider, secret)
                elif wallet_version == "v4r2":
                    wallet = await WalletV4R2.from_private_key(provider, secret)
                else:
                    wallet = await BaseWallet.from_private_key(provider, secret, version=wallet_version)
                return provider, wallet

            provider, wallet = await bridge.run(_start)
            chain = cls(provider, wallet, bridge, network=network)
            try:
                yield chain
            finally:
                with trio.CancelScope(shield=True):
                    await bridge.run(provider.close_all)
        finally:
            bridge.stop()

    async def _run(self, make: Callable[[], Awaitable[T]]) -> T:
        async def wrapper() -> T:
            return await make()

        if self._bridge is None:  # tests: provider is trio-native
            return await make()
        return await self._bridge.run(wrapper)

    # ---- Chain protocol ----------------------------------------------------------------------

    @property
    def wallet_address(self) -> str:
        return self._address

    async def now(self) -> int:
        r = await self._run(lambda: self._provider.get_time())
        if isinstance(r, dict):
            return int(r["now"])
        return int(r)

    async def advance_time(self, seconds: int) -> int:
        raise NotImplementedError("a real chain's clock cannot be moved")

    async def get_balance(self, address: str) -> int:
        acct = await self._run(lambda: self._provider.get_account_state(Address(address)))
        return int(acct.balance or 0)

    async def get_channel_state(self, address: str) -> ChannelState:
        acct = await self._run(lambda: self._provider.get_account_state(Address(address)))
        balance = int(acct.balance or 0)
        if not acct.is_active():
            return ChannelState(address=address, status=ChannelStatus.CLOSED, balance=balance)
        state = await self.get_method(address, "get_channel_state")
        parties = await self.get_method(address, "get_parties")
        return channel_state_from_stacks(address, balance, state, parties)

    async def get_method(self, address: str, method: str) -> list[Any]:
        """The result stack of get-method ``method`` (no arguments) of the contract at ``address``."""
        return list(await self._run(lambda: self._provider.run_get_method(Address(address), method, [])))

    async def _send(self, to: str, body: Cell, value: int, state_init: StateInit | None = None) -> TxResult:
        dest = Address(to)
        # newest lt before we send, so we only look at transactions after it
        before = await self._run(lambda: self._provider.get_transactions(dest, 1))
        since_lt = before[0].lt if before else 0
        msg = self._wallet.create_wallet_internal_message(
            destination=dest, value=value, body=body, state_init=state_init, bounce=True
        )
        await self._run(lambda: self._wallet.raw_transfer(msgs=[msg]))
        return await self._confirm(dest, body.hash, since_lt)

    async def _confirm(self, dest: Address, body_hash: bytes, since_lt: int) -> TxResult:
        """Poll ``dest`` until it executed a message from our wallet with this exact body."""
        me = Address(self._address)
        with trio.move_on_after(CONFIRM_TIMEOUT):
            while True:
                txs = await self._run(lambda: self._provider.get_transactions(dest, 16))
                for tx in txs:
                    if tx.lt <= since_lt or tx.in_msg is None or not tx.in_msg.is_internal:
                        continue
                    if tx.in_msg.info.src != me or tx.in_msg.body.hash != body_hash:
                        continue
                    d = tx.description
                    compute = getattr(d, "compute_ph", None)
                    action = getattr(d, "action", None)
                    exit_code = getattr(compute, "exit_code", None) if compute is not None else None
                    ok = (
                        compute is not None
                        and getattr(compute, "type_", "") == "vm"
                        and bool(compute.success)
                        and not bool(getattr(d, "aborted", False))
                        and (action is None or bool(action.success))
                    )
                    return TxResult(success=ok, exit_code=exit_code, transactions=[{"lt": tx.lt, "now": tx.now}])
                await trio.sleep(CONFIRM_POLL)
        return TxResult(success=False, exit_code=None)

    async def open_channel(self, params: ChannelParams, deposit: int, *, gas: int = DEFAULT_DEPLOY_GAS) -> str:
        address, state_init, body, value = build_open_channel(params, deposit, gas)
        (await self._send(address, body, value, state_init)).raise_for_status()
        return address

    async def top_up(self, address: str, amount: int, *, gas: int = DEFAULT_DEPLOY_GAS) -> TxResult:
        return await self._send(address, top_up_body(amount), amount + gas)

    async def claim(self, address: str, voucher: SignedVoucher, *, value: int = DEFAULT_OP_VALUE) -> TxResult:
        return await self._send(address, voucher.claim_body(), value)

    async def cooperative_close(self, address: str, close: SignedClose, *, value: int = DEFAULT_OP_VALUE) -> TxResult:
        return await self._send(address, close.body(), value)

    async def unilateral_close(
        self, address: str, voucher: SignedVoucher | None, *, value: int = DEFAULT_OP_VALUE
    ) -> TxResult:
        return await self._send(address, start_close_body(voucher), value)

    async def challenge(self, address: str, voucher: SignedVoucher, *, value: int = DEFAULT_OP_VALUE) -> TxResult:
        return await self._send(address, voucher.challenge_body(), value)

    async def finish(self, address: str, *, value: int = DEFAULT_OP_VALUE) -> TxResult:
        return await self._send(address, finish_body(), value)

    def watch_closes(self, addresses: Iterable[str], *, poll_interval: float = 10.0) -> AsyncIterator[ChannelState]:
        return poll_closes(self, addresses, poll_interval)


def build_open_channel(
    params: ChannelParams, deposit: int, gas: int = DEFAULT_DEPLOY_GAS
) -> tuple[str, StateInit, Cell, int]:
    """(address, state_init, body, value) of the deploy+deposit message — pure, offline-testable.

    Raises VoucherError for terms the contract would refuse (see :func:`check_channel_terms`)."""
    check_channel_terms(params, deposit, gas)
    return channel_address(params), channel_state_init(params), top_up_body(deposit), deposit + gas
