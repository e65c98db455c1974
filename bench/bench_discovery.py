"""Discovery traffic benchmark: what following announcements costs ONE node, measured in its own process.

The measured node (a real Mesh with the announcement validator and worker table, in a subprocess, so its CPU
and socket reads are its own) is connected to ``--relays`` relay nodes (this process), all in one GossipSub
mesh per topic, as a node's mesh peers would be. A generator here plays ``--workers`` virtual workers spread
over ``--models`` models: each has its own Ed25519 key and signs its announcements (envelope and pubsub
signature) exactly as a worker does, and injects them at one relay, which validates and forwards them as any
node would; so the measured node gets every message from several mesh peers (real duplicates).

Schedules (per virtual worker): a liveness beat every ``--interval`` s (+-10 %), and, for the ``--busy``
fraction of workers, one load-change announcement every ``--min-interval`` s (the worst case: the load
bucket moves whenever the rate limit allows). Designs:

* ``--design topic``: announcements travel on each model's topic; the measured node follows ``--buy`` models.
  The relays also carry ``--other-models`` further models at the same per-model rate, which must never reach
  the measured node.
* ``--design single``: the design before issue 15, one topic that every node follows (so the measured node
  receives every worker's announcements).

Prints one JSON line (rates per second: messages received incl. duplicates, unique announcements accepted,
Ed25519 checks, bytes read from sockets, CPU % of one core, over ``--duration`` s after a warm-up; and the
same for an idle window before the traffic), then one human line.
    .venv/bin/python bench/bench_discovery.py --design topic --workers 10000 --models 50 --buy 1
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import PUBSUB_SIGNING_PREFIX

from cocoon_node.mesh import (
    WORKERS_TOPIC,
    Announcement,
    AnnouncementValidator,
    Mesh,
    MeshSettings,
    WorkerTable,
    model_topic,
)
from cocoon_node.mesh.announce import MODEL_TOPIC_PREFIX
from cocoon_node.mesh.scoring import IDONTWANT_THRESHOLD, ScoredGossipSub

WIRE_READ = [0]


def count_wire_reads() -> None:
    """Count every byte the node reads from its TCP connections (Noise and yamux framing included)."""
    from libp2p.io.trio import TrioTCPStream

    read = TrioTCPStream.read

    async def counted(self: TrioTCPStream, n: int | None = None) -> bytes:
        data = await read(self, n)
        WIRE_READ[0] += len(data)
        return data

    TrioTCPStream.read = counted  # type: ignore[method-assign]


# ----- the measured node (subprocess) --------------------------------------------------------------------


async def measured(topics: list[str], idle: float, duration: float, degree: int, heartbeat: float) -> None:
    count_wire_reads()
    profile = cProfile.Profile() if os.environ.get("BENCH_PROFILE") else None
    validator, table = AnnouncementValidator(rate_limit_per_minute=10**6), WorkerTable()
    validator.on_accept = table.update
    mesh = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True, topics=tuple(topics), target_peers=1,
                                                    heartbeat_interval=heartbeat, gossip_degree=degree,
                                                    gossip_degree_low=max(1, degree * 2 // 3),
                                                    gossip_degree_high=2 * degree),
                topic_validators={t: validator for t in topics}, prefix_validators={MODEL_TOPIC_PREFIX: validator})
    received = 0
    async with mesh.start():
        assert mesh.pubsub is not None
        push = mesh.pubsub.push_msg

        async def counting(forwarder: ID, msg: rpc_pb2.Message) -> None:
            nonlocal received
            received += 1
            await push(forwarder, msg)

        mesh.pubsub.push_msg = counting  # type: ignore[method-assign]
        print(json.dumps({"addr": mesh.listen_addrs()[0]}), flush=True)
        stdin = trio.lowlevel.FdStream(0)
        buf = b""
        while b"\n" not in buf:  # "go": the relays are connected and the traffic starts
            buf += await stdin.receive_some(64)

        def snapshot() -> dict[str, float]:
            return {"t": time.monotonic(), "cpu": time.process_time(), "io": WIRE_READ[0], "received": received,
                    "accepted": validator.accepted, "rejected": sum(validator.rejected.values())}

        def rates(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
            dt = b["t"] - a["t"]
            return {"seconds": round(dt, 1), "cpu_pct_of_core": round(100 * (b["cpu"] - a["cpu"]) / dt, 3),
                    "bytes_read_per_s": round((b["io"] - a["io"]) / dt), "messages_per_s": round(
                        (b["received"] - a["received"]) / dt, 2),
                    "accepted_per_s": round((b["accepted"] - a["accepted"]) / dt, 2),
                    "rejected_per_s": round((b["rejected"] - a["rejected"]) / dt, 2)}

        start = snapshot()
        await trio.sleep(idle)
        idle_end = snapshot()
        print(json.dumps({"idle_done": True}), flush=True)
        buf = b""
        while b"\n" not in buf:  # the traffic is running and warmed up
            buf += await stdin.receive_some(64)
        busy_start = snapshot()
        if profile is not None:
            profile.enable()
        await trio.sleep(duration)
        end = snapshot()
        if profile is not None:
            profile.disable()
            profile.dump_stats(os.environ["BENCH_PROFILE"])
        models = sorted({a.model for a in table.live()})
        print(json.dumps({"idle": rates(start, idle_end), "busy": rates(busy_start, end),
                          "workers_listed": len(table), "models_listed": models[:5],
                          "models_listed_count": len(models), "rejected": dict(validator.rejected)}), flush=True)


# ----- relays and the generator (this process) --------------------------------------------------------------


class VirtualWorker:
    def __init__(self, model: str, index: int) -> None:
        self.key: KeyPair = create_new_key_pair(hashlib.sha256(f"vw-{model}-{index}".encode()).digest())
        self.peer = ID.from_pubkey(self.key.public_key)
        self.model = model
        self.seqno = 0
        self.pubsub_seqno = 0
        self.load = 0

    def message(self, topics: list[str], ttl: int) -> rpc_pb2.Message:
        self.seqno += 1
        self.pubsub_seqno += 1
        now = int(time.time())
        addr = f"/ip4/198.51.100.{self.seqno % 250}/tcp/4001/p2p/{self.peer.to_base58()}"
        a = Announcement(peer_id=self.peer.to_bytes(), addrs=(addr,), model=self.model, model_hash=b"\x02" * 32,
                         backend="torch", synthetic=False, price_prompt=100, price_completion=200, max_concurrent=8,
                         load=self.load, protocols=("/cocoon/inference/1.0.0",), tee_kind="tdx", seqno=self.seqno,
                         issued_at=now, expires_at=now + ttl, payout="EQ" + "A" * 46, v=1)
        msg = rpc_pb2.Message(data=a.seal(self.key.private_key), topicIDs=topics, from_id=self.peer.to_bytes(),
                              seqno=self.pubsub_seqno.to_bytes(8, "big"))
        msg.signature = self.key.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
        msg.key = self.key.public_key.serialize()
        return msg


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    per_model = max(1, args.workers // args.models)
    if args.design == "topic":
        bought = [f"model-{i}" for i in range(args.buy)]
        others = [f"model-{i}" for i in range(args.buy, args.buy + args.other_models)]
        measured_topics = [model_topic(m) for m in bought]
        traffic = [(m, model_topic(m)) for m in bought + others]
    else:
        bought, others = ["model-0"], []
        measured_topics = [WORKERS_TOPIC]
        per_model = args.workers
        traffic = [("model-0", WORKERS_TOPIC)]
    relay_topics = sorted({t for _, t in traffic})
    command = [sys.executable, __file__, "--measured", "--topics", ",".join(measured_topics),
               "--idle", str(args.idle), "--duration", str(args.duration), "--degree", str(args.degree),
               "--heartbeat", str(args.heartbeat),
               "--idontwant-threshold", str(args.idontwant_threshold)]
    proc = subprocess.Popen(command,  # noqa: ASYNC220 - once, before any traffic
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    result: dict[str, Any] = {}
    try:
        addr = json.loads(await trio.to_thread.run_sync(proc.stdout.readline))["addr"]
        async with AsyncExitStack() as stack:
            relays: list[Mesh] = []
            for _ in range(args.relays):
                v = AnnouncementValidator(rate_limit_per_minute=10**6)
                boots = (addr, *(r.listen_addrs()[0] for r in relays))
                d = args.degree
                relay = Mesh(create_new_key_pair(), MeshSettings(bootstrap=boots, local_cluster=True,
                                                                 topics=tuple(relay_topics), gossip_degree=d,
                                                                 heartbeat_interval=args.heartbeat,
                                                                 gossip_degree_low=max(1, d * 2 // 3),
                                                                 gossip_degree_high=2 * d),
                             topic_validators={t: v for t in relay_topics})
                await stack.enter_async_context(relay.start())
                relays.append(relay)
            with trio.fail_after(60):
                while not all(r.topic_peers(t) >= 1 for r in relays for t in relay_topics):
                    await trio.sleep(0.2)
                await trio.sleep(3)  # meshes grafted
            workers = [(VirtualWorker(m, i), t) for m, t in traffic for i in range(per_model)]
            rng = random.Random(15)
            busy = set(rng.sample(range(len(workers)), round(args.busy * len(workers))))
            proc.stdin.write("go\n")
            proc.stdin.flush()
            await trio.to_thread.run_sync(proc.stdout.readline)  # idle window done
            signed = 0

            async def run_worker(k: int) -> None:
                nonlocal signed
                worker, topic = workers[k]
                relay = relays[k % len(relays)]
                assert relay.pubsub is not None
                await trio.sleep(rng.uniform(0, args.interval))
                next_beat = trio.current_time()
                next_change = trio.current_time() + rng.uniform(0, args.min_interval)
                while True:
                    if k in busy and next_change < next_beat:
                        await trio.sleep_until(next_change)
                        worker.load = 8 - worker.load
                        next_change = trio.current_time() + args.min_interval
                    else:
                        await trio.sleep_until(next_beat)
                        next_beat = trio.current_time() + args.interval * rng.uniform(0.9, 1.1)
                    msg = worker.message([topic], args.ttl)
                    signed += 1
                    await relay.pubsub.push_msg(worker.peer, msg)

            async with trio.open_nursery() as nursery:
                for k in range(len(workers)):
                    nursery.start_soon(run_worker, k)
                await trio.sleep(args.warmup)
                proc.stdin.write("go\n")
                proc.stdin.flush()
                line = await trio.to_thread.run_sync(proc.stdout.readline)
                nursery.cancel_scope.cancel()
            result = json.loads(line)
            result["generated_per_s_all_topics"] = round(signed / (args.warmup + args.duration), 1)
    except BaseException as exc:  # py-libp2p can raise from tasks still forwarding while the relays stop
        if not result:
            raise
        print(f"(ignored while stopping the relays: {exc!r})", file=sys.stderr)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measured", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--topics", default="", help=argparse.SUPPRESS)
    p.add_argument("--design", choices=["topic", "single"], default="topic")
    p.add_argument("--workers", type=int, default=10_000)
    p.add_argument("--models", type=int, default=50)
    p.add_argument("--buy", type=int, default=1)
    p.add_argument("--other-models", dest="other_models", type=int, default=2)
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--min-interval", dest="min_interval", type=float, default=10.0)
    p.add_argument("--ttl", type=int, default=90)
    p.add_argument("--busy", type=float, default=1.0)
    p.add_argument("--relays", type=int, default=6)
    p.add_argument("--idle", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=15.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--degree", type=int, default=6, help="GossipSub D of every node (measured and relays)")
    p.add_argument("--heartbeat", type=float, default=1.0, help="GossipSub heartbeat of every node, seconds")
    p.add_argument("--idontwant-threshold", dest="idontwant_threshold", type=int, default=IDONTWANT_THRESHOLD,
                   help="send IDONTWANT only for messages of at least this many bytes (every node here)")
    args = p.parse_args()
    ScoredGossipSub.idontwant_threshold = args.idontwant_threshold
    if args.measured:
        trio.run(measured, [t for t in args.topics.split(",") if t], args.idle, args.duration, args.degree,
                 args.heartbeat)
        return
    result = trio.run(drive, args)
    out = {"bench": "discovery", "design": args.design, "workers": args.workers, "models": args.models,
           "buy": args.buy, "interval_s": args.interval, "min_interval_s": args.min_interval,
           "busy_fraction": args.busy, "relays": args.relays, "degree": args.degree, "heartbeat_s": args.heartbeat,
           "idontwant_threshold": args.idontwant_threshold, **result}
    print(json.dumps(out))
    b, i = result["busy"], result["idle"]
    print(f"discovery {args.design}: {args.workers} workers / {args.models} models, buys {args.buy}: "
          f"{b['accepted_per_s']} announcements/s ({b['messages_per_s']} msgs/s with duplicates), "
          f"{b['bytes_read_per_s'] / 1000:.1f} kB/s read, {b['cpu_pct_of_core']:.2f} % of a core "
          f"(idle: {i['bytes_read_per_s'] / 1000:.1f} kB/s, {i['cpu_pct_of_core']:.2f} %); "
          f"{result['workers_listed']} workers listed")


if __name__ == "__main__":
    main()
