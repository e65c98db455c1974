"""The network's rules for a channel's terms (the registry's minimum deposit and challenge period range).

Both ends enforce them when a channel opens: a requester does not deploy a channel the network's workers
would refuse (its deposit locked for nothing), and a worker serves no channel whose deposit is below the
minimum or whose challenge period is too short to answer a stale close in (or longer than the network
accepts to wait). The rules come from the registry contract (:mod:`cocoon_node.payments.registry`) through
a :data:`RulesSource`, which answers None while no rules are known (no registry configured, or not read yet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cocoon_node.payments.chain.base import ChainError
from cocoon_node.payments.voucher import MAX_CHALLENGE_PERIOD

__all__ = ["ChannelRules", "ChannelRulesError", "RulesSource"]


class ChannelRulesError(ChainError):
    """A channel's terms break the network's rules (the requester's config, or the channel it offered)."""


@dataclass(frozen=True)
class ChannelRules:
    min_deposit: int = 0
    min_challenge_period: int = 0
    max_challenge_period: int = MAX_CHALLENGE_PERIOD

    def problems(self, deposit: int, challenge_period: int) -> list[str]:
        """What is wrong with these terms (empty: they comply)."""
        out = []
        if deposit < self.min_deposit:
            out.append(f"deposit {deposit} is below the network's minimum {self.min_deposit}")
        if not self.min_challenge_period <= challenge_period <= self.max_challenge_period:
            out.append(f"challenge period {challenge_period} s is outside the network's "
                       f"{self.min_challenge_period}..{self.max_challenge_period} s")
        return out


RulesSource = Callable[[], "ChannelRules | None"]
