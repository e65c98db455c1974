"""Every pinned py-libp2p patch refuses another release before touching anything, saying what to re-read."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from cocoon_node.mesh import kad_protocol, prompt_locks, task_index, tcp_addrs, yamux_patch

PATCHES = [(kad_protocol, "DHT protocol", "Kademlia protocol id"), (tcp_addrs, "TCP listener", "get_addrs"),
           (yamux_patch, "yamux", "_write_frame"), (task_index, "task index", "_find_parent_task"),
           (prompt_locks, "prompt-lock", "trio.Locks")]


@pytest.mark.parametrize(("module", "named", "says"), PATCHES, ids=lambda p: getattr(p, "__name__", p))
def test_a_patch_refuses_another_libp2p(monkeypatch: Any, module: Any, named: str, says: str) -> None:
    pinned = importlib.import_module("cocoon_node.mesh._pinned")
    monkeypatch.setattr(pinned, "version", lambda name: "0.9.0")
    with pytest.raises(RuntimeError) as refused:
        module.install()
    text = str(refused.value)
    assert named in text and "0.8.1" in text and "0.9.0" in text and says in text, text
