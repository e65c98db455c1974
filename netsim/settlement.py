"""Settlement in a simulation run: the EMULATED chain's clock, rogue workers' stale closes, and what the chain
paid at the end.

The EMULATED chain's clock only moves when asked. :class:`StaleCloseWatch` moves it past a stale close's
challenge period once the payer's watcher reported the close (or ``settle_after`` passed), so the close can
finish within the run, and records what each channel paid out; the report's invariants check those figures.
The lowball payer's own watch lives with it (:class:`netsim.lowball.LowballWatch`); a new payment adversary
adds its watch next to these and its figures to :class:`~netsim.simdata.SimData`.
"""

from __future__ import annotations

from typing import Any

import trio

from netsim.context import SimContext

CLAIM_PAYOUT, CLOSE_PAYOUT, REFUND = 0x5C0C0010, 0x5C0C0011, 0x5C0C0012


class StaleCloseWatch:
    """Watches the ``stale_close`` rogue workers (netsim/rogue.py) and settles their closes on the chain."""

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    def closers(self) -> list[str]:
        return [n.name for n in self.ctx.data.nodes.values() if n.adversary == "stale_close"]

    async def _closes(self) -> list[dict[str, Any]]:
        closes: list[dict[str, Any]] = []
        for name in self.closers():
            st = await self.ctx.cluster.try_status(name, timeout=5)
            if st is not None:
                self.ctx.data.last_status[name] = st
            st = st or self.ctx.data.last_status.get(name) or {}
            closes += [{**c, "worker": name} for c in (st.get("adversary") or {}).get("closes") or []]
        return closes

    def _payer_noticed(self, address: str) -> str | None:
        for name, st in self.ctx.data.last_status.items():
            node = self.ctx.data.nodes.get(name)
            if node is None or node.role != "requester":
                continue
            watch = ((st.get("payments") or {}).get("payer_watch") or {}).get("closes") or []
            if any(c["address"] == address for c in watch):
                return name
        return None

    async def advance_chain(self, observer: Any, deadline: int, why: str) -> None:
        if self.ctx.lowball is not None:
            await self.ctx.lowball.hold_clock()  # never jump past a lowball close its worker has not answered yet
        now = await observer.now()
        if now < deadline:
            await observer.advance_time(deadline - now + 1)
            self.ctx.event("chain_clock_advanced", "chain", seconds=deadline - now + 1, why=why,
                           note="EMULATED chain: its clock only moves when asked")

    async def watch(self) -> None:
        """Watch rogue workers' stale closes; once the payer's watcher reported one (or ``settle_after`` passed),
        move the EMULATED chain's clock past its challenge period so it can finish within the run."""
        from cocoon_node.payments.chain.local import LocalChain

        assert self.ctx.cluster.chain_url is not None
        groups = {g.name: g for g in self.ctx.s.workers}
        seen: dict[str, float] = {}
        noticed: set[str] = set()
        settled: set[str] = set()
        async with LocalChain.connect(self.ctx.cluster.chain_url, "netsim-clock") as observer:
            while True:
                for c in await self._closes():
                    address = c["address"]
                    if not c["success"] or address in settled:
                        continue
                    if address not in seen:
                        seen[address] = trio.current_time()
                        self.ctx.event("stale_close", c["worker"], channel=address, payer=c["payer"],
                                       stale_voucher=[c["stale_seqno"], c["stale_cumulative"]],
                                       newest_voucher=[c["newest_seqno"], c["newest_cumulative"]],
                                       attempts=[(a["what"], a["error_name"]) for a in c["attempts"]])
                    payer = self._payer_noticed(address)
                    if payer is not None and address not in noticed:
                        noticed.add(address)
                        self.ctx.event("stale_close_noticed", payer, channel=address)
                    g = groups.get(self.ctx.data.nodes[c["worker"]].group or "")
                    wait = g.settle_after if g is not None else 8.0
                    if payer is not None or trio.current_time() - seen[address] >= wait:
                        await self.advance_chain(observer, c["deadline"], f"settle the stale close of {address}")
                        settled.add(address)
                await trio.sleep(1.0)

    async def wait_settled(self, bound: float = 30.0) -> None:
        """Wait until every stale close is finished on chain (the clock is moved again if still needed)."""
        from cocoon_node.payments.chain.base import ChannelStatus
        from cocoon_node.payments.chain.local import LocalChain

        assert self.ctx.cluster.chain_url is not None
        async with LocalChain.connect(self.ctx.cluster.chain_url, "netsim-clock") as observer:
            with trio.move_on_after(bound):
                while True:
                    closes = [c for c in await self._closes() if c["success"]]
                    open_ = []
                    for c in closes:
                        st = await observer.get_channel_state(c["address"])
                        if st.status is not ChannelStatus.CLOSED:
                            open_.append(c)
                            await self.advance_chain(observer, st.close_deadline, "final settlement check")
                    if not open_:
                        break
                    await trio.sleep(1.0)
            for c in await self._closes():
                self.ctx.data.stale_settlements[c["address"]] = await channel_settlement(observer, c["address"])


async def channel_settlement(observer: Any, address: str) -> dict[str, Any]:
    """What the chain shows for one channel: status and every payout it sent (claims, close payout, refund)."""
    st = await observer.get_channel_state(address)
    payouts = {"payee": 0, "payer_refund": 0}
    for t in await observer.transactions(address, limit=2000):
        for m in t["outMessages"]:
            if m["op"] in (CLAIM_PAYOUT, CLOSE_PAYOUT):  # the amount paid, not the payee's gas coming back
                payouts["payee"] += int(m["amount"] if m.get("amount") is not None else m["value"])
            elif m["op"] == REFUND:
                payouts["payer_refund"] += int(m["value"])
    return {"status": st.status.value, **payouts}


async def record_chain_totals(ctx: SimContext) -> None:
    """The shared EMULATED chain's total supply view and transaction count at the end of the run."""
    if not ctx.cluster.chain_url:
        return
    from cocoon_node.payments.chain.local import LocalChain

    try:
        with trio.fail_after(20):
            async with LocalChain.connect(ctx.cluster.chain_url, "netsim-observer") as observer:
                ctx.data.chain_supply = {k: int(v) for k, v in (await observer.total_supply()).items()}
                ctx.data.chain_transactions = len(await observer.transactions(None, limit=100_000))
    except Exception as exc:  # report it as a harness error, do not crash the report
        ctx.data.errors.append(f"reading the local chain failed: {exc!r}")
