"""Fixtures for payment tests: contract npm deps, keys, and an EMULATED local chain per test."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon_node.payments.chain.local import LocalChain, ensure_contract_deps
from cocoon_node.payments.voucher import ChannelParams, public_key_bytes

TON = 1_000_000_000
T0 = 1_800_000_000


@pytest.fixture(scope="session", autouse=True)
def contract_deps() -> None:
    """npm ci in contracts/ if node_modules is missing (once per session)."""
    ensure_contract_deps()


def party_key(name: str) -> Ed25519PrivateKey:
    """Deterministic Ed25519 key for a test party."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"cocoon-py-{name}".encode()).digest())


@dataclass
class Parties:
    """Payer and payee views of one emulated chain, with their signing keys."""

    payer: LocalChain
    payee: LocalChain
    stranger: LocalChain
    payer_key: Ed25519PrivateKey
    payee_key: Ed25519PrivateKey

    def params(self, channel_id: int, challenge_period: int = 3600) -> ChannelParams:
        return ChannelParams(
            payer_key=public_key_bytes(self.payer_key),
            payee_key=public_key_bytes(self.payee_key),
            payer=self.payer.wallet_address,
            payee=self.payee.wallet_address,
            channel_id=channel_id,
            challenge_period=challenge_period,
        )


@pytest.fixture
async def parties() -> AsyncIterator[Parties]:
    """A fresh sidecar (one child process) with three funded wallets."""
    with trio.fail_after(60):
        async with LocalChain.start("payer", balance=1000 * TON, now=T0) as payer:
            payee = await payer.for_wallet("payee", balance=10 * TON)
            stranger = await payer.for_wallet("stranger", balance=10 * TON)
            yield Parties(payer, payee, stranger, party_key("payer"), party_key("payee"))
