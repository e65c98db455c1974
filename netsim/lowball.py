"""NETSIM-ONLY rogue payer ``lowball_close``: a requester that pays like an honest one, then tries to take back what
its workers earned by closing their channels on chain for less than it signed (issue 19).

Two attacks, one per channel, cycling through ``--mode``:

``lower_voucher``
    sign voucher #newest+1 for a quarter of the newest amount (never below what the chain already paid) and
    ``start_close`` with it. While the contract ranked vouchers by seqno, the worker's real voucher then looked
    stale and was refused.
``max_seqno``
    ``start_close`` without a voucher, then ``challenge`` with (2^64-1, 0), which used to lock out every later
    voucher.

It attacks only when netsim says so (the ``--trigger`` file appears once its own requests are done, so no voucher
is in flight), only channels to the ``--target-peer`` workers (those whose settlement is honest: a rogue payee that
never challenges proves nothing), and it never finishes a close itself: its honest watcher
(``ChannelManager.check_closes``) does after the challenge period. Its admin status lists every close, the vouchers
involved and the contract's exit codes. It refuses to run outside the ``local`` network with the EMULATED chain.

The netsim half (:class:`LowballWatch`, built by the runner when a scenario has ``[lowball]``) plays the payer's
requests, pulls the trigger, holds the EMULATED clock until every attacked worker answered (or ``settle_after``
passed), then moves it past the challenge period; :func:`invariant` checks that every attacked payee ended with at
least its newest voucher's amount.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import trio

from cocoon_node.api import NodeHttp
from cocoon_node.cli import build_parser, overrides_from_args, serve_until_signalled
from cocoon_node.config import Config, ConfigError, load_config
from cocoon_node.mesh import TransportFactory
from cocoon_node.node import Node
from cocoon_node.payments.chain.base import ChannelStatus
from cocoon_node.payments.channels import CHAIN_OP_TIMEOUT, ChannelManager
from cocoon_node.payments.meter import PayerChannel
from cocoon_node.payments.voucher import MAX_SEQNO, sign_voucher
from netsim.node import add_link_table_option, link_shaping
from netsim.scenario import LOWBALL_MODES, LowballPayer
from netsim.workload import PlannedRequest, run_request

if TYPE_CHECKING:
    from netsim.context import SimContext

log = logging.getLogger("netsim.lowball")

KIND = "lowball_close"
CLAIM_PAYOUT, CLOSE_PAYOUT, REFUND = 0x5C0C0010, 0x5C0C0011, 0x5C0C0012


# ----- the rogue payer (runs inside its own node process) ------------------------------------------------


@dataclass
class Attempt:
    what: str
    success: bool
    exit_code: int | None
    error_name: str


@dataclass
class LowballClose:
    address: str
    worker: str                  # the payee's peer id
    mode: str
    newest_seqno: int            # the newest voucher this payer signed (and the worker holds)
    newest_cumulative: int
    lowball_seqno: int           # the voucher it closed or challenged with instead
    lowball_cumulative: int
    success: bool                # the close started
    error_name: str
    committed_after: int = 0     # what the chain committed right after the attack
    deadline: int = 0
    attempts: list[Attempt] = field(default_factory=list)


class LowballCloser:
    """Waits for ``trigger``, then closes each target channel of ``manager`` with less than it signed."""

    def __init__(self, manager: ChannelManager, *, targets: frozenset[str], trigger: Path,
                 modes: tuple[str, ...] = LOWBALL_MODES) -> None:
        self.manager = manager
        self.targets = targets
        self.trigger = trigger
        self.modes = modes
        self.closes: dict[str, LowballClose] = {}
        self.spared: list[str] = []  # channels to workers outside the targets, left alone
        self.triggered = False
        self.done = False
        self.trigger_checks = 0  # looks for the trigger file so far (a test sees the watch run before it fires)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while not await trio.Path(self.trigger).exists():
            self.trigger_checks += 1
            await trio.sleep(0.2)
        self.triggered = True
        try:
            await self.attack_all()
        finally:
            self.done = True

    async def attack_all(self) -> None:
        for peer, ch in list(self.manager.channels.items()):
            if peer not in self.targets or ch.newest is None:
                self.spared.append(ch.address)
                continue
            mode = self.modes[len(self.closes) % len(self.modes)]
            async with ch.lock:  # no voucher is signed on this channel meanwhile
                if self.manager.channels.get(peer) is ch:
                    del self.manager.channels[peer]  # later requests to this worker open a fresh channel
                try:
                    close = await self._attack(peer, ch, mode)
                except Exception as exc:  # record it and go on with the next channel
                    log.warning("lowball close of %s failed: %r", ch.address, exc)
                    continue
            self.closes[ch.address] = close
            log.warning("ROGUE: %s close of %s (holding #%d = %d): %s", mode, ch.address, close.newest_seqno,
                        close.newest_cumulative, close.error_name)
            if close.success:
                store = self.manager.store
                await store.run(partial(store.set_channel, ch.address, status="closing"))

    async def _attack(self, peer: str, ch: PayerChannel, mode: str) -> LowballClose:
        chain, key, newest = self.manager.chain, self.manager.payer_key, ch.newest
        assert newest is not None
        cid = ch.params.channel_id
        attempts: list[Attempt] = []
        with trio.fail_after(CHAIN_OP_TIMEOUT):
            st = await chain.get_channel_state(ch.address)
            if mode == "lower_voucher":
                low = sign_voucher(key, cid, newest.seqno + 1, max(st.claimed, newest.cumulative // 4))
                r = await chain.unilateral_close(ch.address, low)
            else:
                low = sign_voucher(key, cid, MAX_SEQNO, 0)
                r = await chain.unilateral_close(ch.address, None)
                if r.success:
                    c = await chain.challenge(ch.address, low)
                    attempts.append(Attempt("challenge with (2^64-1, 0)", c.success, c.exit_code, c.error_name))
            after = await chain.get_channel_state(ch.address)
        return LowballClose(ch.address, peer, mode, newest.seqno, newest.cumulative, low.seqno, low.cumulative,
                            r.success, r.error_name, after.committed, after.close_deadline, attempts)

    def status(self) -> dict[str, Any]:
        return {"kind": KIND, "targets": sorted(self.targets), "triggered": self.triggered, "done": self.done,
                "closes": [asdict(c) for c in self.closes.values()], "spared": self.spared}


class LowballNode(Node):
    """A requester node whose payments role carries a :class:`LowballCloser`."""

    def __init__(self, config: Config, *, targets: frozenset[str], trigger: Path, modes: tuple[str, ...],
                 transport_factory: TransportFactory | None = None) -> None:
        super().__init__(config, http=NodeHttp(), transport_factory=transport_factory)
        self._closer_args = {"targets": targets, "trigger": trigger, "modes": modes}
        self.closer: LowballCloser | None = None

    async def _run_roles(self, nursery: trio.Nursery, task_status: Any) -> None:
        pay = self.payments
        assert pay is not None and pay.channels is not None, "a lowball closer is a paid requester"
        self.closer = LowballCloser(pay.channels, **self._closer_args)  # type: ignore[arg-type]
        nursery.start_soon(self.closer.run)
        await super()._run_roles(nursery, task_status)

    async def status(self) -> dict[str, Any]:
        out = await super().status()
        out["adversary"] = self.closer.status() if self.closer is not None else {"kind": KIND}
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="netsim.lowball", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trigger", type=Path, required=True, help="attack once this file exists")
    parser.add_argument("--target-peer", action="append", default=[], help="worker peer id whose channel to attack")
    parser.add_argument("--mode", action="append", choices=LOWBALL_MODES, help="attack modes to cycle through")
    add_link_table_option(parser)
    parser.add_argument("node_args", nargs=argparse.REMAINDER, help="run <cocoon-node run flags>")
    args = parser.parse_args(argv)
    node_args = build_parser().parse_args(args.node_args)
    if node_args.command != "run":
        raise SystemExit("netsim.lowball: only the run command is supported")
    try:
        config = load_config(node_args.config, overrides=overrides_from_args(node_args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"netsim.lowball: config error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    if config.node.network != "local" or config.payments.chain != "local":
        raise SystemExit("netsim.lowball: NETSIM-ONLY adversaries run on the local network and EMULATED chain only")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("libp2p", "hypercorn", "httpx", "multiaddr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    node = LowballNode(config, targets=frozenset(args.target_peer), trigger=args.trigger,
                       modes=tuple(args.mode or LOWBALL_MODES),
                       transport_factory=link_shaping(config, args.link_table, "netsim.lowball"))
    trio.run(serve_until_signalled, node, {"rogue": KIND})


# ----- the netsim side ------------------------------------------------------------------------------------


class LowballWatch:
    """What netsim does around the lowball payers of one run."""

    def __init__(self, sim: SimContext, cfg: LowballPayer) -> None:
        self.sim = sim
        self.cfg = cfg
        self.triggered_at: float | None = None
        self.ready: set[str] = set()        # closes the worker answered, or whose settle_after passed
        self.settled = False                # the clock was moved past every close's deadline

    def names(self) -> list[str]:
        return [f"lowball{i}" for i in range(1, self.cfg.count + 1)]

    def commands(self) -> list[tuple[str, list[str]]]:
        """(name, command line) of each lowball payer to start."""
        return [(name, self.command(name)) for name in self.names()]

    def command(self, name: str) -> list[str]:
        """The rogue's command line: it attacks the channels of workers whose settlement is honest."""
        targets = [n.peer_id for n in self.sim.data.nodes.values()
                   if n.role == "worker" and n.adversary not in ("stale_close", "bad_model_hash")]
        cmd = [sys.executable, "-m", "netsim.lowball", "--trigger", str(self.sim.base_dir / f"{name}.trigger")]
        for t in targets:
            cmd += ["--target-peer", t]
        for m in self.cfg.modes:
            cmd += ["--mode", m]
        return cmd

    async def workload(self) -> None:
        """The payers' own bursts of requests, then the trigger (nothing is in flight by then)."""
        sim, cfg = self.sim, self.cfg
        rng = random.Random(sim.data.seed * 171 + 5)
        async with httpx.AsyncClient(timeout=httpx.Timeout(cfg.timeout, connect=5.0)) as client:

            async def one(name: str, k: int, at: float) -> None:
                api = sim.data.nodes[name].api_url
                assert api is not None
                prompt = " ".join(rng.choice(("lowball", "seqno", "voucher", "close")) for _ in range(cfg.prompt_words))
                req = PlannedRequest(20_000 + k, at, 0, prompt, cfg.max_tokens, cfg.stream)
                sim.data.lowball_results.append(await run_request(client, api, name, req, sim.s.workload.model,
                                                                  sim.t0, cfg.timeout))

            for b in range(cfg.bursts):
                at = cfg.start + b * cfg.every
                await trio.sleep_until(sim.t0 + at)
                async with trio.open_nursery() as nursery:
                    for name in self.names():
                        for j in range(cfg.burst_size):
                            nursery.start_soon(one, name, b * cfg.burst_size + j, at)
        for name in self.names():
            await trio.Path(sim.base_dir / f"{name}.trigger").write_text("go\n")
        self.triggered_at = trio.current_time()
        sim.event("lowball_trigger", ",".join(self.names()))

    async def _closes(self) -> tuple[list[dict[str, Any]], bool]:
        """Every lowball close so far (with the payer's name) and whether every payer has finished attacking."""
        closes: list[dict[str, Any]] = []
        done = True
        for name in self.names():
            st = await self.sim.cluster.try_status(name, timeout=5)
            if st is not None:
                self.sim.data.last_status[name] = st
            adv = (st or self.sim.data.last_status.get(name) or {}).get("adversary") or {}
            done = done and bool(adv.get("done"))
            closes += [{**c, "payer": name} for c in adv.get("closes") or []]
        return closes, done

    async def _worker_newest(self, worker_peer: str, address: str) -> int | None:
        name = next((n.name for n in self.sim.data.nodes.values() if n.peer_id == worker_peer), None)
        st = await self.sim.cluster.try_status(name, timeout=5) if name else None
        for ch in ((st or {}).get("payments") or {}).get("channels") or []:
            if ch["address"] == address and ch["role"] == "payee":
                return int(ch["voucher_cumulative"])
        return None

    def pending(self) -> bool:
        """Triggered, and some close may still wait for its worker's challenge: the clock must not jump."""
        return self.triggered_at is not None and not self.settled

    async def hold_clock(self, bound: float | None = None) -> None:
        """Called before any netsim jump of the EMULATED clock: a jump past an unanswered lowball close would
        cost its worker what compressed time, not the contract, took away."""
        with trio.move_on_after(bound if bound is not None else self.cfg.settle_after + 10):
            while self.pending():
                await trio.sleep(0.5)

    async def settle(self) -> None:
        """Once every payer attacked and every attacked worker answered (or ``settle_after`` passed), move the
        clock past the latest deadline, so the closes finish within the run."""
        from cocoon_node.payments.chain.local import LocalChain

        assert self.sim.cluster.chain_url is not None
        while self.triggered_at is None:
            await trio.sleep(0.5)
        async with LocalChain.connect(self.sim.cluster.chain_url, "netsim-lowball") as observer:
            while True:
                closes, done = await self._closes()
                waited = trio.current_time() - self.triggered_at
                for c in closes:
                    if not c["success"] or c["address"] in self.ready:
                        continue
                    st = await observer.get_channel_state(c["address"])
                    newest = await self._worker_newest(c["worker"], c["address"])
                    if (newest is not None and st.committed >= newest) or waited >= self.cfg.settle_after:
                        self.ready.add(c["address"])
                        self.sim.event("lowball_answered" if waited < self.cfg.settle_after else "lowball_unanswered",
                                       c["payer"], channel=c["address"], committed=st.committed, worker_newest=newest)
                if (done or waited >= self.cfg.settle_after) and all(
                        c["address"] in self.ready for c in closes if c["success"]):
                    deadline = max((c["deadline"] for c in closes if c["success"]), default=0)
                    now = await observer.now()
                    if now < deadline:
                        await observer.advance_time(deadline - now + 1)
                        self.sim.event("chain_clock_advanced", "chain", seconds=deadline - now + 1,
                                       why="settle the lowball closes", note="EMULATED chain: its clock only "
                                       "moves when asked")
                    self.settled = True
                    return
                await trio.sleep(1.0)

    async def wait_settled(self, bound: float = 45.0) -> None:
        """Wait until every attacked channel is finished on chain; record what the chain paid each side."""
        from cocoon_node.payments.chain.local import LocalChain

        assert self.sim.cluster.chain_url is not None
        async with LocalChain.connect(self.sim.cluster.chain_url, "netsim-lowball") as observer:
            with trio.move_on_after(bound):
                while True:
                    closes, _ = await self._closes()
                    states = [await observer.get_channel_state(c["address"]) for c in closes if c["success"]]
                    if self.settled and all(st.status is ChannelStatus.CLOSED for st in states):
                        break
                    await trio.sleep(1.0)
            closes, _ = await self._closes()
            for c in closes:
                out = await _payouts(observer, c["address"])
                out["worker_newest"] = await self._worker_newest(c["worker"], c["address"])
                self.sim.data.lowball_settlements[c["address"]] = out


async def _payouts(observer: Any, address: str) -> dict[str, Any]:
    """Status of one channel and the amounts its payouts stated (claims and close payout) and its refund."""
    st = await observer.get_channel_state(address)
    out = {"status": st.status.value, "payee": 0, "payer_refund": 0}
    for t in await observer.transactions(address, limit=2000):
        for m in t["outMessages"]:
            if m["op"] in (CLAIM_PAYOUT, CLOSE_PAYOUT) and m.get("amount") is not None:
                out["payee"] += int(m["amount"])
            elif m["op"] == REFUND:
                out["payer_refund"] += int(m["value"])
    return out


def invariant(data: Any, node: Any, add: Any) -> None:
    """``lowball_close_contained[NAME]``: every payee the payer attacked ends with at least its newest voucher."""
    st = data.final_status.get(node.name) or data.last_status.get(node.name) or {}
    adv = st.get("adversary") or {}
    closes: list[dict[str, Any]] = adv.get("closes") or []
    names = {n.peer_id: n.name for n in data.nodes.values() if n.role == "worker"}
    problems: list[str] = []
    parts: list[str] = []
    if not adv.get("done"):
        problems.append("the trigger never fired or the payer never finished attacking")
    if not closes:
        problems.append(f"no channel to a target worker to attack (spared {len(adv.get('spared') or [])})")
    for c in closes:
        wname, address = names.get(c["worker"], c["worker"][:12]), c["address"][:12]
        s = data.lowball_settlements.get(c["address"]) or {}
        newest = s.get("worker_newest")
        cheats = [a["what"] for a in c["attempts"] if a["success"]]
        line = (f"{address} to {wname} ({c['mode']}): holding #{c['newest_seqno']} ({c['newest_cumulative']}), "
                f"closed with #{c['lowball_seqno']} ({c['lowball_cumulative']}): {c['error_name']}; "
                + "".join(f"{a['what']} -> {a['error_name']}; " for a in c["attempts"]))
        if cheats:
            problems.append(f"{address}: the contract accepted {cheats}")
        if not c["success"]:
            parts.append(line + "the contract refused the close")
            continue
        if s.get("status") != "closed":
            problems.append(f"{address}: not settled by the end of the run ({s.get('status')})")
        elif newest is None:
            problems.append(f"{address}: {wname}'s newest voucher is unknown (no status)")
        elif s["payee"] < newest:
            problems.append(f"{address}: {wname} ended with {s['payee']} < its newest voucher {newest}")
        parts.append(line + f"committed right after {c['committed_after']}; settled {s.get('status')}: {wname} "
                     f"paid {s.get('payee')} (its newest voucher {newest}), payer refunded {s.get('payer_refund')}")
    modes = sorted({c["mode"] for c in closes})
    add(f"lowball_close_contained[{node.name}]", "FAIL" if problems else "PASS",
        "; ".join(problems + parts) if problems else
        f"contained ({', '.join(modes)}): every attacked payee ended with at least its newest voucher (vouchers "
        "rank by amount; the worker challenged the lowball close); " + "; ".join(parts))


if __name__ == "__main__":
    main()
