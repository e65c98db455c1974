"""GossipSub settings reach py-libp2p and stay put; delivered topic messages are drained, not left to pile up."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.api import NodeHttp
from cocoon_node.cli import build_parser, overrides_from_args
from cocoon_node.config import ConfigError, load_config
from cocoon_node.mesh import WORKERS_TOPIC, AnnouncementValidator, Mesh, MeshSettings
from cocoon_node.node import Node
from tests.mesh.test_mesh_inprocess import make_announcement
from tests.waiting import wait_until

# py-libp2p's per-topic delivery queue holds 32 messages; more than that shows whether anyone reads it.
MESSAGES = 45


async def test_heartbeat_is_kept_and_deliveries_are_drained(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    receiver = AnnouncementValidator()
    async with AsyncExitStack() as stack:
        first = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True, topics=(WORKERS_TOPIC,),
                                                         heartbeat_interval=0.5, gossip_degree=3,
                                                         gossip_degree_low=2, gossip_degree_high=6),
                     topic_validators={WORKERS_TOPIC: receiver})
        await stack.enter_async_context(first.start())
        second = Mesh(create_new_key_pair(), MeshSettings(bootstrap=(first.listen_addrs()[0],), local_cluster=True,
                                                          topics=(WORKERS_TOPIC,)),
                      topic_validators={WORKERS_TOPIC: AnnouncementValidator()})
        await stack.enter_async_context(second.start())
        gossipsub = first.gossipsub
        assert gossipsub is not None
        # Adaptive gossip would rescale the heartbeat to 30-60 s once its health score dips; it is off.
        assert not gossipsub.adaptive_gossip_enabled
        assert gossipsub.heartbeat_interval == 0.5 and gossipsub.degree == 3
        await wait_until(lambda: second.topic_peers(WORKERS_TOPIC) > 0, timeout=20)
        with trio.fail_after(30):
            seqno = 1
            def delivered_after(count: int) -> bool:
                return receiver.accepted > count

            while receiver.accepted < MESSAGES:
                before = receiver.accepted
                await second.publish(WORKERS_TOPIC, make_announcement(second, seqno).seal(
                    second._key_pair.private_key))
                seqno += 1
                with trio.move_on_after(1):  # not delivered (mesh still grafting): publish the next one
                    await wait_until(partial(delivered_after, before), timeout=2)
        assert gossipsub.heartbeat_interval == 0.5
    assert not [r for r in caplog.records if "fail to deliver" in r.getMessage()]


def test_gossip_flags_reach_the_mesh_settings(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "--data-dir", str(tmp_path), "--gossip-heartbeat", "5",
                                      "--gossip-degree", "3", "--target-peers", "4"])
    settings = Node(load_config(None, env={}, overrides=overrides_from_args(args)), http=NodeHttp())._mesh_settings()
    assert (settings.heartbeat_interval, settings.target_peers) == (5.0, 4)
    assert (settings.gossip_degree, settings.gossip_degree_low, settings.gossip_degree_high) == (3, 2, 6)
    with pytest.raises(ConfigError) as err:
        load_config(None, env={}, overrides={"node": {"gossip_heartbeat": 0, "gossip_degree": 0,
                                                      "target_peers": 500}})
    assert {p.split(":")[0] for p in err.value.problems} == {"node.gossip_heartbeat", "node.gossip_degree",
                                                            "node.target_peers"}
