"""Payment channels over a run's restarts (issue 16): a requester SIGKILLed mid-stream and restarted on its data
dir, the closes at the end, what each side stored and what the chain did per channel.

* :func:`kill_mid_stream` (fault ``kill_mid_stream``): a long streamed request through the target requester,
  SIGKILL after a few chunks, restart on the same data dir after ``restart_after``;
* :func:`close_at_end` (``[invariants] close_channels_at_end``): every live requester closes all its channels
  on command (its admin ``POST /channels/close``, what ``cocoon-node channels close`` calls) while the workers
  are up, so closes are cooperative;
* :func:`record_books` reads every node's ``payments.db`` (read-only) and the EMULATED chain's transactions per
  channel; :func:`invariants` judges them: ``vouchers_agree`` (every voucher a worker holds is one its payer
  stored, bit for bit; seqnos never reused; the newest arrived, within the credit window) and ``channel_ops``
  (on-chain operations per channel lifetime: the goal is one open and at most one close, plus top-ups).
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import trio

from netsim.context import SimContext
from netsim.scenario import Fault

# In-message ops on a channel account (cocoon_node/payments/voucher.py); the deploy carries a top-up body.
_OPS = {0x5C0C0001: "top_up", 0x5C0C0002: "claim", 0x5C0C0003: "cooperative_close", 0x5C0C0004: "start_close",
        0x5C0C0005: "challenge", 0x5C0C0006: "finish"}
_CLOSES = ("cooperative_close", "start_close")


def _life(ctx: SimContext) -> dict[str, Any]:
    return ctx.data.channel_life


async def kill_mid_stream(ctx: SimContext, lifecycle: Any, f: Fault) -> None:
    """SIGKILL each target requester while it streams an answer, then restart it on its data dir."""
    for name in f.targets:
        node = ctx.data.nodes[name]
        body = {"model": ctx.s.workload.model, "stream": True, "max_tokens": 200,
                "messages": [{"role": "user", "content": " ".join(["stream"] * 60)}]}
        chunks, worker = 0, None
        try:
            with trio.move_on_after(60):
                async with httpx.AsyncClient(timeout=30) as client, client.stream(
                        "POST", f"{node.api_url}/v1/chat/completions", json=body) as resp:
                    worker = resp.headers.get("x-cocoon-worker")
                    async for line in resp.aiter_lines():
                        if line.startswith("data: ") and '"content"' in line:
                            chunks += 1
                            if chunks == 5:
                                await lifecycle.take_down(name, signal.SIGKILL, "dead", "kill_mid_stream")
                                break
        except httpx.HTTPError:
            pass  # the requester is gone under the stream
        if node.state != "dead":  # the stream ended first: kill it anyway, the fault is the kill
            await lifecycle.take_down(name, signal.SIGKILL, "dead", "kill_mid_stream")
        _life(ctx).setdefault("kills", []).append({"requester": name, "t": round(ctx.now(), 2),
                                                   "chunks_before_kill": chunks, "worker": worker})
        await trio.sleep(f.restart_after or 0.0)
        await lifecycle.restart(name)


async def admin_close(cluster: Any, name: str, peer: str | None = None) -> list[dict[str, Any]]:
    """Node ``name`` closes its channels (to ``peer``, or all) on command: its admin ``POST /channels/close``,
    what ``cocoon-node channels close`` calls."""
    node = json.loads((cluster.nodes[name].data_dir / "node.json").read_text())
    async with httpx.AsyncClient(timeout=150) as client:
        resp = await client.post(node["admin_url"] + "/channels/close", json={"peer": peer} if peer else {},
                                 headers={"authorization": f"Bearer {node['admin_token']}"})
    return [{**c, "requester": name} for c in resp.json().get("closed") or []]


async def close_on_command(ctx: SimContext, name: str) -> list[dict[str, Any]]:
    """:func:`admin_close` of every channel of ``name``; a failure is a harness error (and closes nothing)."""
    try:
        return await admin_close(ctx.cluster, name)
    except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
        ctx.data.errors.append(f"closing {name}'s channels failed: {exc!r}")
        return []


async def close_at_end(ctx: SimContext) -> None:
    """Every live requester closes its channels on command, while every worker is still up."""
    closes: list[dict[str, Any]] = []
    for name in ctx.live_requesters():
        closes += await close_on_command(ctx, name)
    _life(ctx)["end_closes"] = closes
    ctx.event("channels_closed", "-", closed=len(closes), cooperative=sum(1 for c in closes if c.get("cooperative")))


def read_book(path: Path) -> dict[str, Any]:
    """A node's stored channels and vouchers (read-only): address -> role, peer, status, [(seqno, cum, sig)]."""
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        book = {a: {"role": r, "peer": p, "status": s, "vouchers": []}
                for a, r, p, s in conn.execute("SELECT address, role, peer, status FROM channels ORDER BY created_at")}
        for a, seqno, cum, sig in conn.execute("SELECT address, seqno, cumulative, signature FROM vouchers "
                                               "ORDER BY address, seqno"):
            book[a]["vouchers"].append((int(seqno), int(cum), bytes(sig).hex()))
        return book
    finally:
        conn.close()


async def record_books(ctx: SimContext) -> None:
    """Every node's voucher book, and per payer channel the on-chain operations the chain recorded."""
    books: dict[str, dict[str, Any]] = {}
    for name, n in ctx.data.nodes.items():
        if n.role in ("worker", "requester") and name in ctx.cluster.nodes:
            path = ctx.cluster.nodes[name].data_dir / "payments.db"
            try:
                books[name] = await trio.to_thread.run_sync(read_book, path)
            except sqlite3.Error as exc:
                ctx.data.errors.append(f"reading {name}'s payments.db failed: {exc!r}")
    _life(ctx)["books"] = books
    if not ctx.cluster.chain_url:
        return
    from cocoon_node.payments.chain.local import LocalChain

    ops: dict[str, dict[str, Any]] = {}
    async with LocalChain.connect(ctx.cluster.chain_url, "netsim-channel-ops") as observer:
        for name, book in books.items():
            for address, ch in book.items():
                if ch["role"] != "payer" or ctx.data.nodes[name].adversarial:
                    continue
                count: Counter[str] = Counter()
                for t in await observer.transactions(address, limit=2000):
                    if t["account"] != address or t["inType"] != "internal" or t["inBounced"]:
                        continue
                    op = _OPS.get(t["inOp"], "other")
                    if op == "top_up" and not count["open"]:
                        op = "open"  # the deploy carries the first deposit as a top-up
                    count[op if t["success"] else f"failed_{op}"] += 1
                ops[address] = {"requester": name, "peer": ch["peer"], **count}
    _life(ctx)["onchain_ops"] = ops


def invariants(data: Any, add: Any) -> None:
    """``vouchers_agree`` and ``channel_ops`` over the books :func:`record_books` read."""
    life = data.channel_life
    books = life.get("books")
    if not books:
        return
    from cocoon_node.config import PaymentsSection

    window = PaymentsSection().credit_window
    payer = {a: (name, ch) for name, b in books.items() for a, ch in b.items() if ch["role"] == "payer"}
    problems, agreed, behind = [], 0, []
    for wname, b in books.items():
        for address, ch in b.items():
            if ch["role"] != "payee" or address not in payer:
                continue
            rname, mine = payer[address]
            signed = {v[0]: v for v in mine["vouchers"]}
            foreign = [v[0] for v in ch["vouchers"] if signed.get(v[0]) != v]
            if foreign:
                problems.append(f"{wname} holds voucher(s) #{foreign[:5]} of {address[:12]} its payer {rname} never "
                                "stored as such")
            seqnos = [v[0] for v in mine["vouchers"]]
            if any(b2[1] < a2[1] for a2, b2 in zip(mine["vouchers"], mine["vouchers"][1:], strict=False)) \
                    or len(set(seqnos)) != len(seqnos):
                problems.append(f"{rname}'s vouchers on {address[:12]} go backwards or reuse a seqno")
            newest = mine["vouchers"][-1] if mine["vouchers"] else (0, 0, "")
            theirs = ch["vouchers"][-1] if ch["vouchers"] else (0, 0, "")
            if theirs != newest:
                behind.append(f"{address[:12]}: {wname} #{theirs[0]}={theirs[1]}, {rname} #{newest[0]}={newest[1]}")
                if newest[1] - theirs[1] > window:
                    problems.append(f"{address[:12]}: {newest[1] - theirs[1]} signed by {rname} never reached "
                                    f"{wname} (more than the {window} window)")
            agreed += 1
    kills = life.get("kills") or []
    resumed = {k["requester"]: (data.final_status.get(k["requester"]) or {}).get("payments", {}).get("resume")
               for k in kills}
    add("vouchers_agree", "FAIL" if problems else "PASS", "; ".join(problems) or
        f"{agreed} channel(s) seen by both sides: every voucher a worker holds is its payer's, bit for bit, no "
        f"seqno reused; newest differ on {len(behind)} (unsent tails within the window){': ' if behind else ''}"
        f"{'; '.join(behind[:4])}; requesters killed mid-stream: "
        f"{[(k['requester'], k['chunks_before_kill']) for k in kills]}, resumed at restart: {resumed}")
    ops = life.get("onchain_ops") or {}
    if ops:
        extra = [f"{a[:12]} ({o['requester']}): {dict((k, v) for k, v in o.items() if k not in ('requester', 'peer'))}"
                 for a, o in ops.items() if o.get("open", 0) != 1 or sum(o.get(c, 0) for c in _CLOSES) > 1]
        pairs = Counter((o["requester"], o["peer"]) for o in ops.values())
        reopened = [f"{r}->{p[:12]}: {n} channels" for (r, p), n in pairs.items() if n > 1]
        totals: Counter[str] = Counter()
        for o in ops.values():
            totals.update({k: v for k, v in o.items() if k not in ("requester", "peer")})
        # Judged only where the run's closes are its own (`close_channels_at_end`): elsewhere adversaries close
        # channels on purpose (a stale-closing worker makes its payers open another), so the figures are info.
        judged = data.scenario.invariants.close_channels_at_end
        add("channel_ops", ("FAIL" if extra or reopened else "PASS") if judged else "SKIP",
            f"{len(ops)} payer channel(s), on-chain ops in all {dict(totals)} (goal per channel: one open, at most "
            f"one close, plus top-ups and the worker's claims)" + (f"; beyond it: {extra[:5]}" if extra else "")
            + (f"; reopened: {reopened[:5]}" if reopened else ""))
