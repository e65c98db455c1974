"""NETSIM-ONLY receipt cheat (issue 16), run through :mod:`netsim.rogue`:

``receipt_liar``
    A worker that streams honestly, and whose ``final`` frame is honest, but whose signed receipts claim
    ``--overclaim-tokens`` more completion tokens than it streamed: an over-claim moved to the one place a
    requester might keep as proof. Requesters must refuse every such receipt (``bad_receipt``, a worker fault),
    store none, and count none of its answers as a success.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from cocoon_node.inference import ReceiptSigner, ServedRequest
from netsim.simdata import SimData

KINDS = ("receipt_liar",)


@dataclass
class LieBook:
    receipts: int = 0          # receipts signed (every one over-claims)
    claimed_extra_tokens: int = 0


class OverclaimingReceipts:
    """Wraps the worker's honest signer: each receipt it signs claims ``extra`` more completion tokens."""

    def __init__(self, honest: ReceiptSigner, extra: int) -> None:
        self.honest = honest
        self.extra = extra
        self.book = LieBook()

    def sign(self, served: ServedRequest) -> bytes:
        self.book.receipts += 1
        self.book.claimed_extra_tokens += self.extra
        return self.honest.sign(replace(served, completion_tokens=served.completion_tokens + self.extra))


def after_roles(node: Any) -> None:
    """Graft the lie onto a started RogueNode's worker."""
    assert node.worker is not None and node.worker.server is not None, "a receipt liar is a worker"
    server = node.worker.server
    assert server.receipts is not None, "the honest worker signs receipts"
    node.receipt_liar = OverclaimingReceipts(server.receipts, node.overclaim_tokens)
    server.receipts = node.receipt_liar


def status(node: Any) -> dict[str, Any]:
    liar = getattr(node, "receipt_liar", None)
    return {"receipts": asdict(liar.book), "extra_tokens_per_receipt": liar.extra} if liar is not None else {}


def invariant(data: SimData, add: Any) -> None:
    """``receipt_liar_caught``: its lying receipts were refused, none of its answers counted as a success."""
    for node in [n for n in data.nodes.values() if n.adversary == "receipt_liar"]:
        st = data.final_status.get(node.name) or data.last_status.get(node.name) or {}
        signed = ((st.get("adversary") or {}).get("receipts") or {}).get("receipts", 0)
        accepted = [r.index for r in data.results if r.ok and r.worker == node.peer_id]
        # a JSON error answer names no worker (no x-cocoon-worker header): bad receipts are this liar's
        caught = [r for r in data.results if not r.ok and "bad_receipt" in r.cause
                  and r.worker in (None, "", node.peer_id)]
        problems = []
        if accepted:
            problems.append(f"answers with a lying receipt counted as successes: {accepted[:10]}")
        if not signed:
            problems.append("the liar signed no receipt (nothing was tested)")
        elif not caught:
            problems.append(f"{signed} lying receipts, none reported by a requester")
        extra = (st.get("adversary") or {}).get("extra_tokens_per_receipt")
        add("receipt_liar_caught", "FAIL" if problems else "PASS", "; ".join(problems) or
            f"{node.name}: {signed} receipts each claiming {extra} extra completion tokens; requesters refused "
            f"{len(caught)} answers as bad_receipt "
            f"({caught[0].detail[:120] if caught else ''}), accepted none")
