"""NETSIM-ONLY payment cheats of issue 20, each with the invariant that says whether it was contained.

Node side (run through ``python -m netsim.rogue --kind KIND``, which refuses anything but the ``local`` network
and the EMULATED chain; the kinds are registered there):

``inflate``
    A worker whose delta frames claim :data:`INFLATE_FACTOR` times the tokens it streamed (its final frame
    agrees, so only the counts give it away). Its book holds, per requester, what it really streamed.
``voucherless``
    A requester that opens channels and never signs a voucher, not even for a prompt, with many small
    requests: each one fits the tail slack a worker used to forgive.
``bad_close_sig``
    A worker that serves honestly but answers every cooperative close with a signature that does not verify.

Runner side: :func:`setup` starts the voucherless requesters and a ``closer1`` requester that can only afford
the bad-signature worker; :func:`timeline` plays the voucherless requests and the closer's life (a few
requests, `channels close` on command, SIGTERM, restart, then netsim moves the EMULATED chain clock
past the challenge period); :func:`invariants` judges all three.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import trio

from cocoon_node.inference.audit import HELD_BACK_TOKENS
from cocoon_node.inference.stream import PROTOCOL_ID, InferenceServer
from cocoon_node.mesh import Announcement
from cocoon_node.payments.meter import RequesterPaymentMeter
from cocoon_node.wire import FrameStream
from cocoon_node.wire.messages.inference import CODEC, AcceptFrame, DeltaFrame, FinalFrame, InferenceFrame

if TYPE_CHECKING:
    from netsim.context import SimContext
    from netsim.lifecycle import Lifecycle
    from netsim.simdata import SimData

log = logging.getLogger("netsim.paycheats")

KINDS = ("inflate", "voucherless", "bad_close_sig")
WORKER_KINDS = ("inflate", "bad_close_sig")
INFLATE_FACTOR = 3
CLOSER = "closer1"
CLOSER_START, CLOSER_REQUESTS, CLOSER_RETRIES = 2.0, 3, 6


# ----- node side ---------------------------------------------------------------------------------------------


@dataclass
class StreamBook:
    """What the inflating worker streamed to one requester, and what it claimed."""

    requests: int = 0
    prompt_tokens: int = 0
    streamed_tokens: int = 0
    claimed_tokens: int = 0
    streamed_amount: int = 0   # nanotons: prompt + streamed tokens at its prices


class _InflatingFrames(FrameStream[InferenceFrame]):
    def __init__(self, raw: Any) -> None:
        super().__init__(raw, CODEC)
        self.prompt = self.streamed = self.claimed = 0

    async def send(self, frame: InferenceFrame) -> None:
        match frame:
            case AcceptFrame():
                self.prompt = frame.prompt_tokens
            case DeltaFrame():
                self.streamed += frame.tokens
                frame = msgspec.structs.replace(frame, tokens=frame.tokens * INFLATE_FACTOR)
                self.claimed += frame.tokens
            case FinalFrame():
                n = frame.completion_tokens * INFLATE_FACTOR
                frame = msgspec.structs.replace(frame, completion_tokens=n, total_tokens=frame.prompt_tokens + n)
        await super().send(frame)


class InflatingServer(InferenceServer):
    """Serves real streams whose delta frames claim INFLATE_FACTOR times the tokens sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.books: dict[str, StreamBook] = {}

    async def handle(self, raw_stream: Any) -> None:
        frames = _InflatingFrames(raw_stream)
        peer_id = raw_stream.muxed_conn.peer_id
        try:
            key = peer_id.extract_public_key()
            await self._serve(frames, key.to_bytes() if key is not None else None)
        except Exception as exc:
            log.info("inflating stream ended: %r", exc)
        finally:
            if frames.prompt or frames.streamed:
                b = self.books.setdefault(peer_id.to_base58(), StreamBook())
                b.requests += 1
                b.prompt_tokens += frames.prompt
                b.streamed_tokens += frames.streamed
                b.claimed_tokens += frames.claimed
                t = self.terms
                b.streamed_amount += frames.prompt * t.price_prompt + frames.streamed * t.price_completion
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await raw_stream.close()
                except Exception:
                    pass


@dataclass
class ReceivedBook:
    """What the voucherless requester received from one worker (and it signed nothing for any of it)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    received_amount: int = 0
    channels: set[str] = field(default_factory=set)


class NeverPaysMeter(RequesterPaymentMeter):
    """Counts what arrives, charges and signs nothing."""

    def __init__(self, base: RequesterPaymentMeter, book: ReceivedBook) -> None:
        super().__init__(base.channel, price_prompt=base.price_prompt, price_completion=base.price_completion,
                         credit_window=base.credit_window, token_counter=base.token_counter)
        self.book = book
        book.channels.add(base.channel.address)

    async def on_accept(self, prompt_tokens: int) -> bytes | None:
        self.book.requests += 1
        self.book.prompt_tokens += prompt_tokens
        self.book.received_amount += prompt_tokens * self.price_prompt
        return None

    async def on_tokens(self, completion_tokens: int) -> bytes | None:
        n = completion_tokens - self.completion_tokens
        if n > 0:
            self.completion_tokens = completion_tokens
            self.book.completion_tokens += n
            self.book.received_amount += n * self.price_completion
        return None

    async def on_final(self, completion_tokens: int) -> bytes | None:
        return await self.on_tokens(completion_tokens)


def before_roles(node: Any) -> None:
    """Graft the cheat onto a RogueNode whose payments role exists but whose roles have not started."""
    pay = node.payments
    node.paycheat = {}
    if node.kind == "voucherless":
        assert pay is not None and pay.channels is not None, "a voucherless requester is a paid requester"
        honest = pay.meter_for
        books: dict[str, ReceivedBook] = {}
        node.paycheat["books"] = books

        async def never_pays(worker: Announcement) -> RequesterPaymentMeter | None:
            meter = await honest(worker)
            return NeverPaysMeter(meter, books.setdefault(worker.peer.to_base58(), ReceivedBook())) if meter else None

        pay.meter_for = never_pays
    elif node.kind == "bad_close_sig":
        assert pay is not None and pay.settlement is not None, "a bad close signer is a paid worker"
        settlement = pay.settlement
        honest_cosign = settlement.cosign_close
        signed: list[dict[str, Any]] = []
        node.paycheat["bad_signatures"] = signed

        async def bad_cosign(address: str, cumulative: int, payer_sig: bytes) -> bytes:
            good = await honest_cosign(address, cumulative, payer_sig)  # checks the terms, stops serving it
            signed.append({"address": address, "cumulative": cumulative})
            log.warning("ROGUE: answering the close of %s with a corrupted signature", address)
            return good[:-1] + bytes([good[-1] ^ 0xFF])

        settlement.cosign_close = bad_cosign  # type: ignore[method-assign]


def after_roles(node: Any) -> None:
    if node.kind != "inflate":
        return
    assert node.worker is not None and node.worker.server is not None, "an inflater is a worker"
    honest = node.worker.server
    server = InflatingServer(honest.backend, honest.terms, meter=honest.meter, on_load_change=honest._on_load_change)
    node.worker.server = server
    node.paycheat["server"] = server
    node.mesh.set_stream_handler(PROTOCOL_ID, server.handle)


async def status(node: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if node.kind == "inflate":
        out["factor"] = INFLATE_FACTOR
        out["by_peer"] = {p: asdict(b) for p, b in node.paycheat["server"].books.items()}
    elif node.kind == "bad_close_sig":
        out["bad_signatures"] = list(node.paycheat["bad_signatures"])
    elif node.kind == "voucherless" and node.payments is not None:
        store = node.payments.store
        by_worker = {}
        for peer, b in node.paycheat["books"].items():
            paid = 0
            for address in b.channels:
                newest = await store.run(store.newest_voucher, address)
                paid += newest.cumulative if newest else 0
            by_worker[peer] = {**asdict(b), "channels": sorted(b.channels), "paid": paid,
                               "unpaid": b.received_amount - paid}
        out["by_worker"] = by_worker
    return out


# ----- runner side -------------------------------------------------------------------------------------------


class Simulation:
    """What the runner side below needs of a run: the shared context and the node lifecycle."""

    def __init__(self, ctx: SimContext, lifecycle: Lifecycle) -> None:
        self.ctx, self.lifecycle = ctx, lifecycle
        self.s, self.base_dir, self.data, self.cluster = ctx.s, ctx.base_dir, ctx.data, ctx.cluster

    @property
    def t0(self) -> float:
        return self.ctx.t0

    def now(self) -> float:
        return self.ctx.now()

    def event(self, kind: str, target: str, **detail: Any) -> None:
        self.ctx.event(kind, target, **detail)

    async def start_requester(self, name: str, port: int | None = None, *, kind: str | None = None,
                              extra_args: list[str] | tuple[str, ...] = ()) -> None:
        """A requester, NETSIM-ONLY rogue of ``kind`` (netsim/rogue.py) if given."""
        rogue = [sys.executable, "-m", "netsim.rogue", "--kind", kind] if kind is not None else None
        await self.lifecycle.start_requester(name, port, rogue=rogue, adversary=kind, extra_args=extra_args)


def _bad_sig_group(sim: Simulation) -> Any:
    return next((g for g in sim.s.workers if g.adversary_kind == "bad_close_sig"), None)


def _closer_args(sim: Simulation) -> list[str]:
    """A config file (there are no flags for it) capping the closer's prices at the bad-signature worker's, the
    cheapest: it can afford nobody else."""
    g = _bad_sig_group(sim)
    path = sim.base_dir / f"{CLOSER}.toml"
    path.write_text(f"[requester]\nmax_price_prompt = {g.price_prompt}\nmax_price_completion = {g.price_completion}\n")
    return ["--config", str(path)]


async def setup(sim: Simulation) -> None:
    s = sim.s
    async with trio.open_nursery() as starters:
        for i in range(1, (s.voucherless.count if s.voucherless else 0) + 1):
            starters.start_soon(partial(sim.start_requester, f"voucherless{i}", kind="voucherless"))
        if _bad_sig_group(sim) is not None:
            starters.start_soon(partial(sim.start_requester, CLOSER, extra_args=_closer_args(sim)))


async def timeline(sim: Simulation) -> None:
    async with trio.open_nursery() as nursery:
        if sim.s.voucherless is not None:
            nursery.start_soon(_voucherless_requests, sim)
        if _bad_sig_group(sim) is not None:
            nursery.start_soon(_closer_life, sim)


async def _requests(sim: Simulation, name: str, n: int, every: float, start: float, words: int, max_tokens: int,
                    stream: bool, into: str, base: int) -> None:
    from netsim.workload import PlannedRequest, run_request

    w = sim.s.workload
    results = sim.data.paycheats.setdefault(into, [])
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0)) as client, trio.open_nursery() as nursery:

        async def one(k: int) -> None:
            api = sim.data.nodes[name].api_url
            assert api is not None
            req = PlannedRequest(base + k, start + k * every, 0, " ".join(["tiny"] * words), max_tokens, stream)
            results.append((await run_request(client, api, name, req, w.model, sim.t0, 60.0)).as_dict())

        for k in range(n):
            await trio.sleep_until(sim.t0 + start + k * every)
            nursery.start_soon(one, k)


async def _voucherless_requests(sim: Simulation) -> None:
    v = sim.s.voucherless
    assert v is not None
    names = [n.name for n in sim.data.nodes.values() if n.adversary == "voucherless"]
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(partial(_requests, sim, name, v.requests, v.every, v.start, v.prompt_words,
                                       v.max_tokens, v.stream, "voucherless_results", 20_000))


async def _closer_life(sim: Simulation) -> None:
    """A few paid requests, its channels closed on command (the bad signature must not lock the deposit), a
    graceful shutdown and a restart, then the challenge period passes on the EMULATED chain and its watcher
    finishes."""
    from cocoon_node.payments.chain.base import ChannelStatus
    from cocoon_node.payments.chain.local import LocalChain
    from netsim.settlement import channel_settlement

    book = sim.data.paycheats.setdefault("closer", {"channels": {}, "notes": []})
    bad = {n.peer_id for n in sim.data.nodes.values() if n.adversary == "bad_close_sig"}
    await _requests(sim, CLOSER, CLOSER_REQUESTS, 0.5, CLOSER_START, 6, 8, False, "closer_results", 30_000)
    for extra in range(CLOSER_RETRIES):  # a loaded machine times requests out: one paid answer is needed
        if any(r["ok"] for r in sim.data.paycheats["closer_results"]):
            break
        await _requests(sim, CLOSER, 1, 0.0, sim.now(), 6, 8, False, "closer_results", 30_100 + extra)
    st = await sim.cluster.try_status(CLOSER, timeout=10) or {}
    channels = {c["address"]: c for c in (st.get("payments") or {}).get("channels") or []
                if c["role"] == "payer" and c["peer"] in bad}
    book["channels"] = {a: {"deposit": c["deposit"], "newest": c["voucher_cumulative"]} for a, c in channels.items()}
    node = sim.data.nodes[CLOSER]
    port = int(str(node.api_url).rsplit(":", 1)[1])
    node.state = "dead"
    from netsim.channel_life import close_on_command

    closed = await close_on_command(sim.ctx, CLOSER)
    sim.event("channels_close", CLOSER, note="on command (POST /channels/close)", closed=len(closed))
    sim.event("term", CLOSER, signal="SIGTERM", note="graceful; channels stay open across restarts (issue 16)")
    await sim.cluster.kill(CLOSER, signal.SIGTERM)
    await sim.start_requester(CLOSER, port, extra_args=_closer_args(sim))
    sim.event("restart", CLOSER)
    assert sim.cluster.chain_url is not None
    async with LocalChain.connect(sim.cluster.chain_url, "netsim-closer-clock") as chain:
        with trio.move_on_after(60):
            for address in channels:
                while (state := await chain.get_channel_state(address)).status is ChannelStatus.OPEN:
                    await trio.sleep(0.5)  # the closer (old run or restarted watcher) has not closed it yet
                book["channels"][address].update(initiator=state.close_initiator, committed=state.committed)
                if state.status is ChannelStatus.CLOSING:
                    if sim.ctx.lowball is not None:  # as every netsim jump: never past an unanswered lowball close
                        await sim.ctx.lowball.hold_clock()
                    now = await chain.now()
                    if now <= state.close_deadline:
                        await chain.advance_time(state.close_deadline - now + 1)
                        sim.event("chain_clock_advanced", "chain", seconds=state.close_deadline - now + 1,
                                  why=f"let {CLOSER} finish {address}", note="EMULATED chain")
                while (await chain.get_channel_state(address)).status is not ChannelStatus.CLOSED:
                    await trio.sleep(0.5)  # the restarted closer's watcher calls finish
        for address in channels:
            book["channels"][address]["settled"] = await channel_settlement(chain, address)


def invariants(data: SimData, add: Any) -> None:
    for node in data.nodes.values():
        if node.adversary == "inflate":
            _inflate(data, node, add)
        elif node.adversary == "voucherless":
            _voucherless(data, node, add)
        elif node.adversary == "bad_close_sig":
            _bad_close(data, node, add)


def _status(data: SimData, name: str) -> dict[str, Any]:
    return data.final_status.get(name) or data.last_status.get(name) or {}


def _inflate(data: SimData, node: Any, add: Any) -> None:
    books: dict[str, dict[str, Any]] = (_status(data, node.name).get("adversary") or {}).get("by_peer") or {}
    requesters = {n.peer_id: n.name for n in data.nodes.values() if n.role == "requester" and not n.adversary}
    pc = next((g.price_completion for g in data.scenario.workers if g.name == node.group), 0)
    # The audit's own words ("... completion tokens for N bytes of text ..."), from this worker (a failed
    # non-streamed answer names no worker); the over-claimer's detections say "... but streamed ...".
    caught = [r for r in data.results if "completion tokens for" in r.detail and r.worker in (None, "", node.peer_id)]
    problems, parts = [], []
    if not any(p in requesters for p in books):
        problems.append("the inflater served no honest requester (nothing was tested)")
    for peer, b in sorted(books.items()):
        name = requesters.get(peer)
        if name is None:
            continue
        channels = [c for c in (_status(data, name).get("payments") or {}).get("channels") or []
                    if c["role"] == "payer" and c["peer"] == node.peer_id]
        paid = sum(c["voucher_cumulative"] for c in channels)
        # A caught stream is paid up to our own bound: the text's tokens plus the audit's small allowance.
        allowed = b["streamed_amount"] + b["requests"] * (HELD_BACK_TOKENS + b["streamed_tokens"] // 32 + 1) * pc
        if paid > allowed:
            problems.append(f"{name} signed {paid} > {allowed} (streamed {b['streamed_amount']} + allowance)")
        mine = sorted((r for r in data.results if r.requester == name), key=lambda r: r.started)
        first = min((r.ended for r in caught if r.requester == name), default=None)
        again = [r.index for r in mine if first is not None and r.started > first and r.worker == node.peer_id]
        if again:
            problems.append(f"{name} sent {len(again)} more requests to the inflater after catching it")
        parts.append(f"{name}: {b['requests']} requests, {b['streamed_tokens']} tokens streamed but "
                     f"{b['claimed_tokens']} claimed; signed {paid} for {b['streamed_amount']} streamed")
    add(f"inflate_contained[{node.name}]", "FAIL" if problems else "PASS", "; ".join(problems + parts) if problems
        else f"detected {len(caught)} times (requester: 'worker claims N completion tokens ... we count at most M', "
        "code overcount, worker dropped); contained: requesters signed only what they counted; " + "; ".join(parts))


def _voucherless(data: SimData, node: Any, add: Any) -> None:
    by_worker: dict[str, dict[str, Any]] = (_status(data, node.name).get("adversary") or {}).get("by_worker") or {}
    names = {n.peer_id: n.name for n in data.nodes.values() if n.role == "worker"}
    results = [r for r in data.paycheats.get("voucherless_results", []) if r["requester"] == node.name]
    problems, parts = [], []
    if not any(b["received_amount"] > 0 for b in by_worker.values()):
        problems.append("the voucherless requester received nothing (nothing was tested)")
    for peer, b in sorted(by_worker.items()):
        wname = names.get(peer, peer[:12])
        window = (_status(data, wname).get("payments") or {}).get("credit_window")
        if b["paid"]:
            problems.append(f"{wname}: the voucherless requester signed {b['paid']} (the harness is broken)")
        if window is None:
            problems.append(f"{wname}: no final status, its credit window is unknown")
        elif b["unpaid"] > window:
            problems.append(f"{wname} served {b['unpaid']} unpaid > its credit window {window}")
        parts.append(f"{wname}: {b['requests']} requests served, {b['unpaid']} unpaid (window {window})")
    refused = sum(1 for r in results if not r["ok"])
    add(f"voucherless_contained[{node.name}]", "FAIL" if problems else "PASS", "; ".join(problems + parts) if problems
        else f"{len(results)} requests, no voucher ever: {refused} refused once a worker's window was used "
        "(no tail slack without a voucher); each worker lost at most its credit window; " + "; ".join(parts))


def _bad_close(data: SimData, node: Any, add: Any) -> None:
    signed = (_status(data, node.name).get("adversary") or {}).get("bad_signatures") or []
    closer = data.paycheats.get("closer") or {}
    problems, parts = [], []
    if not closer.get("channels"):
        problems.append(f"{CLOSER} held no channel to the bad signer (nothing was tested)")
    if not signed:
        problems.append("the bad signer was never asked to co-sign a close")
    for address, c in (closer.get("channels") or {}).items():
        settled = c.get("settled") or {}
        by = {1: "payer", 2: "payee"}.get(c.get("initiator", 0), "nobody")
        line = (f"{address[:12]}: deposit {c['deposit']}, newest voucher {c['newest']}; close by {by} committing "
                f"{c.get('committed')}; settled {settled.get('status')}: worker paid {settled.get('payee')}, "
                f"refund {settled.get('payer_refund')}")
        if settled.get("status") != "closed":
            problems.append(f"{address[:12]}: deposit still locked (channel {settled.get('status')})")
        elif settled.get("payee", 0) > c["newest"] or settled.get("payer_refund", 0) < c["deposit"] - c["newest"]:
            problems.append(f"{address[:12]}: the payer did not get its unspent deposit back")
        parts.append(line)
    add(f"bad_close_contained[{node.name}]", "FAIL" if problems else "PASS", "; ".join(problems + parts) if problems
        else f"{len(signed)} corrupted close signature(s); detected: the requester verified it and closed alone "
        "(initiator payer, its newest voucher); contained: after the challenge period the restarted requester's "
        "watcher finished the close and took its refund; " + "; ".join(parts))
