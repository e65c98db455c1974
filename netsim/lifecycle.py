"""Node lifecycle in a simulation run: start the cluster (workers, host pools, requesters), take nodes down,
restart them.

Every node is started by :meth:`Lifecycle.command`: ``cocoon-node run`` for an honest node, a netsim rogue
entry point for an adversary, and, when the scenario shapes links, through netsim's own entry point with
``--link-table`` (:mod:`netsim.node`), which injects the NETSIM-ONLY shaped transport. With a ``[topology]``
every start goes into the node's network namespace through the cluster the topology swaps in
(:class:`netsim.nscluster.NamespacedCluster`: ``ip netns exec`` around this command, the namespace's listen
address, forwarders for the API and the chain), so restarts land there too; relays start first and, behind
NATs, only public nodes are bootstrap peers.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from functools import partial

import trio

from netsim import paycheats
from netsim.adversary import FakeUpstream
from netsim.context import SimContext
from netsim.scenario import ALL_REQUESTERS, WorkerGroup
from netsim.simdata import SimNode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lifecycle:
    """Starts, stops and restarts the run's nodes; every process goes through the cluster, by PID."""

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    # ----- how nodes are started ---------------------------------------------------------------------------
    def command(self, rogue: list[str] | None = None, *, clock_skew: float = 0.0) -> list[str] | None:
        """The command line before ``run <flags>``: ``rogue`` (a netsim rogue entry point) or, for None, the
        honest node; with shaped links, each gets ``--link-table`` and the honest node starts as
        ``python -m netsim.node``, as it does with a ``clock_skew`` (NETSIM-ONLY shaping and clock skew are
        applied there, never by ``cocoon-node`` itself)."""
        links = self.ctx.links
        honest = [sys.executable, "-m", "netsim.node"]
        if clock_skew:
            honest += ["--clock-skew", str(clock_skew)]
        if links is None:
            return rogue or (honest if clock_skew else None)  # None: Cluster's own ``python -m cocoon_node``
        return [*(rogue or honest), "--link-table", str(links.path)]

    def bootstrap_args(self, exclude: str = "") -> list[str]:
        ctx = self.ctx
        ups = [n for n in ctx.data.nodes.values() if n.state == "up" and n.name != exclude and not n.adversarial]
        if ctx.nat is not None:  # behind a NAT a node's listen address is private: bootstrap from public ones
            ups = [n for n in ups if ctx.nat.is_public(n.name)]
        out: list[str] = []
        for n in ups[:3]:
            out += ["--bootstrap", ctx.cluster.nodes[n.name].addr]
        return out

    def register_link_ends(self, name: str) -> None:
        """Tell the link table where ``name`` listens now (after a start or a restart)."""
        ctx = self.ctx
        if ctx.links is None:
            return
        proc, node = ctx.cluster.nodes[name], ctx.data.nodes[name]
        groups = {node.group} if node.group else set()
        if node.role == "requester":
            groups.add(ALL_REQUESTERS)
        ctx.links.register(name, proc.peer_id, [str(a) for a in proc.ready.get("addrs", [])], groups)
        ctx.links.write()

    def worker_args(self, g: WorkerGroup) -> list[str]:
        args = ["--worker", "--local-cluster", "--tee", g.tee, "--model", g.model,
                "--price-prompt", str(g.price_prompt), "--price-completion", str(g.price_completion),
                "--max-concurrent", str(g.max_concurrent), *g.extra_args]
        if g.adversary_kind == "bad_model_hash":
            fake = self.ctx.fake
            assert fake is not None and fake.url is not None
            return [*args, "--backend", "openai-upstream", "--upstream-url", fake.url + "/v1"]
        args += ["--backend", g.backend]
        if g.backend == "synthetic":
            args += ["--synthetic-rate", str(g.synthetic_rate)]
        return args

    # ----- set-up ----------------------------------------------------------------------------------------
    async def start_cluster(self, nursery: trio.Nursery) -> None:
        """Workers first (the first good one seeds the mesh), then requesters that allow what they report."""
        ctx, s = self.ctx, self.ctx.s
        started = time.monotonic()
        if ctx.nat is not None:  # [topology]: the public relays first, everyone's bootstrap peers
            await ctx.nat.start_relays(ctx, self)
        if any(g.adversary_kind == "bad_model_hash" for g in s.workers):
            ctx.fake = FakeUpstream(next(g.model for g in s.workers if g.adversary_kind == "bad_model_hash"))
            await nursery.start(ctx.fake.run)
        await self._start_workers()
        await self._read_allowed_weights()
        async with trio.open_nursery() as starters:
            for i in range(1, s.requesters + 1):
                starters.start_soon(self.start_requester, f"requester{i}")
            for i in range(1, (s.nonpayer.count if s.nonpayer else 0) + 1):
                starters.start_soon(partial(self.start_requester, f"nonpayer{i}", nonpayer=True))
            for name, command in ctx.lowball.commands() if ctx.lowball is not None else []:
                starters.start_soon(partial(self.start_requester, name, rogue=command, adversary="lowball_close"))
        await paycheats.setup(paycheats.Simulation(ctx, self))  # voucherless requesters, the bad-signature closer
        ctx.data.setup_s = round(time.monotonic() - started, 2)

    async def _start_workers(self) -> None:
        s = self.ctx.s
        good = [g for g in s.workers if not g.adversary_kind and not g.pooled]
        pooled = [g for g in s.workers if g.pooled]
        bad = [g for g in s.workers if g.adversary_kind]
        # The first good worker seeds the mesh; everyone else bootstraps from whoever is up.
        seed_group = good[0] if good else None
        if seed_group is not None:
            await self.start_worker(f"{seed_group.name}1", seed_group)
        async with trio.open_nursery() as starters:
            for g in good:
                for i in range(1, g.count + 1):
                    if g is seed_group and i == 1:
                        continue
                    starters.start_soon(self.start_worker, f"{g.name}{i}", g)
            for g in pooled:
                for p, first in enumerate(range(1, g.count + 1, g.per_process)):
                    count = min(g.per_process, g.count - first + 1)
                    starters.start_soon(self._start_pool, g, p, first, count)
        async with trio.open_nursery() as starters:
            for g in bad:
                for i in range(1, g.count + 1):
                    starters.start_soon(self.start_worker, f"{g.name}{i}", g)

    async def _read_allowed_weights(self) -> None:
        """Requesters allow exactly the weight hashes the good workers report in their status."""
        ctx = self.ctx
        pooled = any(g.pooled for g in ctx.s.workers)
        hashes: set[str] = set()
        good_names = [n.name for n in ctx.data.nodes.values() if n.role == "worker" and not n.adversarial]
        for name in good_names[:8] if not pooled else good_names[:2]:
            st = await ctx.cluster.try_status(name, timeout=10)
            if st and st.get("worker"):
                hashes.add(st["worker"]["model_hash"])
        if not hashes:
            raise RuntimeError("could not read any good worker's model hash from its status")
        ctx.data.allowed_hashes = sorted(hashes)
        # Misnamed workers attest a model the network does allow, under its own name (netsim/misnamed.py).
        for n in [n for n in ctx.data.nodes.values() if n.adversary == "misnamed"]:
            st = await ctx.cluster.try_status(n.name, timeout=10) or {}
            adv, w = st.get("adversary") or {}, st.get("worker") or {}
            if adv.get("attested_model") and w.get("model_hash"):
                ctx.data.allowed_models.append(f"{adv['attested_model']}={w['model_hash']}")

    # ----- starting one node -------------------------------------------------------------------------------
    async def start_worker(self, name: str, g: WorkerGroup) -> None:
        ctx = self.ctx
        kind = g.adversary_kind
        rogue = None
        if kind in ("overclaim", "stale_close"):  # NETSIM-ONLY rogue worker: real node code, one behaviour changed
            rogue = [sys.executable, "-m", "netsim.rogue", "--kind", kind,
                     "--overclaim-tokens", str(g.overclaim_tokens), "--stale-after", str(g.stale_after)]
        elif kind == "misnamed":  # NETSIM-ONLY: announces g.model, its report attests another model
            rogue = [sys.executable, "-m", "netsim.misnamed"]
        elif kind in (*paycheats.WORKER_KINDS, "receipt_liar"):  # NETSIM-ONLY cheats (paycheats/receiptcheats.py)
            rogue = [sys.executable, "-m", "netsim.rogue", "--kind", kind,
                     "--overclaim-tokens", str(g.overclaim_tokens), "--stale-after", str(g.stale_after)]
        node = await ctx.cluster.start_node(name, [*self.worker_args(g), *self.bootstrap_args()],
                                            timeout=ctx.s.start_timeout, command=self.command(rogue))
        ctx.data.nodes[name] = SimNode(name, "worker", g.name, kind is not None, False, node.peer_id, "up",
                                       adversary=kind)
        self.register_link_ends(name)

    async def _start_pool(self, g: WorkerGroup, p: int, first: int, count: int) -> None:
        ctx = self.ctx
        args = [*self.worker_args(g), *self.bootstrap_args()]
        nodes = await ctx.cluster.start_pool(f"pool-{g.name}-{p}", g.name, count, first, args,
                                             timeout=ctx.s.start_timeout,
                                             link_table=ctx.links.path if ctx.links is not None else None)
        for n in nodes:
            ctx.data.nodes[n.name] = SimNode(n.name, "worker", g.name, False, True, n.peer_id, "up")
            self.register_link_ends(n.name)

    async def start_requester(self, name: str, port: int | None = None, *, nonpayer: bool = False,
                              rogue: list[str] | None = None, adversary: str | None = None,
                              extra_args: list[str] | tuple[str, ...] = ()) -> None:
        ctx = self.ctx
        port = port or _free_port()
        args = ["--requester", "--local-cluster", "--allow-dev-tee", "--api-port", str(port),
                *[x for h in ctx.data.allowed_hashes for x in ("--allowed-model-hash", h)],
                *[x for m in ctx.data.allowed_models for x in ("--allowed-model", m)],
                *ctx.s.requester_args, *extra_args, *self.bootstrap_args()]
        # NETSIM-ONLY rogue requester: pays prompts, withholds every completion voucher (netsim/rogue.py).
        command = [sys.executable, "-m", "netsim.rogue", "--kind", "nonpayer"] if nonpayer else rogue
        node = await ctx.cluster.start_node(name, args, timeout=ctx.s.start_timeout, command=self.command(command))
        ctx.data.nodes[name] = SimNode(name, "requester", None, adversarial=nonpayer or rogue is not None,
                                       peer_id=node.peer_id, state="up", api_url=node.ready["api_url"],
                                       adversary="nonpayer" if nonpayer else adversary)
        self.register_link_ends(name)
        ctx.data.requester_ready[name] = trio.current_time()

    # ----- taking nodes down and bringing them back ----------------------------------------------------------
    async def take_down(self, name: str, sig: signal.Signals, state: str, why: str) -> None:
        ctx = self.ctx
        node = ctx.data.nodes[name]
        if node.pooled:
            ctx.data.errors.append(f"fault on pooled node {name} ignored (it shares a process)")
            return
        ctx.event(why, name, signal=signal.Signals(sig).name)
        node.state = state
        ctx.expect(name, False, why)
        if name in ctx.cluster.stopped:
            ctx.cluster.signal(name, signal.SIGCONT)
        try:
            await ctx.cluster.kill(name, sig)
        except trio.TooSlowError:
            ctx.data.errors.append(f"{name} did not exit after {signal.Signals(sig).name}; killing")
            await ctx.cluster.kill(name, signal.SIGKILL)

    async def restart(self, name: str) -> None:
        """Start ``name`` again as an honest node (a rogue comes back honest, as before the split)."""
        ctx = self.ctx
        node = ctx.data.nodes[name]
        args = list(ctx.cluster.nodes[name].args)
        try:
            if node.role == "requester":
                port = int(str(node.api_url).rsplit(":", 1)[1])
                await self.start_requester(name, port)
            else:
                # Same data dir, so the same identity; fresh bootstrap peers since the old ones may be gone.
                base = without_flags(args, ("--bootstrap",))
                await self.restart_worker(name, base)
                node.state = "up"
        except Exception as exc:
            ctx.data.errors.append(f"restart of {name} failed: {exc}")
            return
        ctx.event("restart", name)
        ctx.expect(name, True, "restart")

    async def restart_worker(self, name: str, args: list[str], *, clock_skew: float = 0.0) -> None:
        """Start worker ``name`` again with ``args`` and fresh bootstrap peers (and its wall clock ``clock_skew``
        seconds off); re-register its link ends."""
        ctx = self.ctx
        await ctx.cluster.start_node(name, [*args, *self.bootstrap_args(exclude=name)],
                                     timeout=ctx.s.start_timeout, command=self.command(clock_skew=clock_skew))
        self.register_link_ends(name)


def without_flags(args: list[str], flags: tuple[str, ...]) -> list[str]:
    """``args`` with every ``FLAG VALUE`` pair of ``flags`` removed."""
    return [a for a, prev in zip(args, ["", *args], strict=False) if a not in flags and prev not in flags]
