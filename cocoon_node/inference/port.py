"""The port of the inference stream ``/cocoon/inference/1.0.0``: what its two ends and payments share.

The worker's server (:mod:`.server`) and the requester's client (:mod:`.client`) carry frames; what a token
costs is decided behind :class:`WorkerMeter` / :class:`RequesterMeter`, which ``cocoon_node.payments``
implements. This module is all that payments imports from inference: the protocol's id and limits, the two
meter protocols with the errors they raise, and the :class:`TokenCounter` a requester meter carries to the
stream (payments only hands it on; the stream's audit counts with it). The frames themselves are typed in
:mod:`cocoon_node.wire.messages.inference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from cocoon_node.wire import FrameStream
from cocoon_node.wire.messages import inference as wire_inference
from cocoon_node.wire.messages.inference import CODEC, InferenceFrame, PaymentRef

if TYPE_CHECKING:
    from cocoon_node.inference.chat import ChatRequest

PROTOCOL_ID: Final[str] = wire_inference.PROTOCOL_ID
MAX_FRAME: Final[int] = wire_inference.MAX_FRAME_BYTES

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_ID",
    "InferenceFrame",
    "MeterError",
    "PaidBy",
    "PaymentRef",
    "PaymentRequired",
    "ReceiptSigner",
    "RequesterMeter",
    "ServedRequest",
    "TextCount",
    "TokenCounter",
    "WorkerMeter",
    "open_frames",
    "remote_key",
    "send_quietly",
    "sole_exception",
]


def open_frames(stream: Any) -> FrameStream[InferenceFrame]:
    """Typed inference frames over one libp2p stream (or anything with its ``read`` / ``write``)."""
    return FrameStream(stream, CODEC)


# ----- worker side: payments implements this -------------------------------------------------------------


class WorkerMeter(Protocol):
    """Payment accounting for one request on the worker (see cocoon_node.payments)."""

    credit_window: int

    async def admit(self, request_id: str, payment: PaymentRef | None, prompt_tokens: int,
                    payer_key: bytes | None = None) -> None:
        """Raise PaymentRequired when the request cannot be served on credit (``payer_key``: the stream's
        authenticated remote key, which must own the channel)."""

    async def before_tokens(self, request_id: str, completion_tokens: int) -> None:
        """Wait until ``completion_tokens`` more tokens are within the credit window."""

    async def on_voucher(self, request_id: str, voucher: bytes) -> None: ...

    async def finish(self, request_id: str, prompt_tokens: int, completion_tokens: int) -> None: ...


class PaymentRequired(Exception):
    """The worker will not serve without a payment channel or a fresh voucher."""


@dataclass(frozen=True)
class ServedRequest:
    """What a worker served for one request, as it saw it: the facts its receipt signs (issue 16)."""

    request_id: str
    chat_wire: dict[str, Any]   # the request frame's ``chat`` map, as received
    output: str                 # the deltas' texts, concatenated, exactly as streamed
    prompt_tokens: int
    completion_tokens: int
    price_prompt: int
    price_completion: int
    channel: str                # the request's payment channel ("" = unpaid)
    voucher: bytes              # the voucher the requester says paid it (b"" = none)


class ReceiptSigner(Protocol):
    """Signs receipts with the key the worker's attestation report binds (``cocoon_node.node`` builds one)."""

    def sign(self, served: ServedRequest) -> bytes:
        """The signed receipt envelope (``protocols/receipt.toml``); raises ValueError on a voucher it cannot
        read."""


# ----- requester side: payments implements this ----------------------------------------------------------


class TextCount(Protocol):
    """A running count of the tokens in a growing text."""

    tokens: int

    def add(self, piece: str) -> int:
        """Append ``piece``; returns the token count of the whole text so far."""


class TokenCounter(Protocol):
    """Counts tokens exactly as one model does (implementations: :mod:`cocoon_node.inference.tokencount`)."""

    tokenizer_hash: bytes

    def count_prompt(self, chat: ChatRequest) -> int:
        """Prompt tokens of a chat request (chat template applied, assistant turn opened)."""

    def text_count(self) -> TextCount:
        """A fresh running count for one completion."""


class MeterError(Exception):
    """The requester's own meter could not pay (its voucher store failed): the call ends, the worker is not
    blamed (WorkerFailure code ``local_payment``)."""


@dataclass(frozen=True)
class PaidBy:
    """The voucher that pays a finished request: the payer's newest on the channel once the tail is paid."""

    voucher: bytes
    channel: str
    seqno: int
    cumulative: int


class RequesterMeter(Protocol):
    """Payment side of one request on the requester (see cocoon_node.payments)."""

    #: The worker's tokenizer when we hold it: the stream then counts claimed tokens itself (inference.audit).
    token_counter: TokenCounter | None

    def payment_ref(self) -> PaymentRef | None: ...

    def respect_credit_window(self, window: int) -> None:
        """The worker's credit window (from its accept): pay often enough that it never stalls."""

    async def on_accept(self, prompt_tokens: int) -> bytes | None:
        """Voucher covering the prompt, if any."""

    async def on_tokens(self, completion_tokens: int) -> bytes | None:
        """Voucher covering tokens received so far, when one is due."""

    async def on_final(self, completion_tokens: int) -> bytes | None:
        """Voucher paying whatever is still unpaid once the worker sent its final frame."""

    def paid_by(self) -> PaidBy | None:
        """The voucher that paid this request (after :meth:`on_final`), for its receipt; None: none signed."""


# ----- helpers both ends use ------------------------------------------------------------------------------


def sole_exception(group: BaseExceptionGroup) -> BaseException:
    """The one exception inside nested single-member groups (a nursery wrapped the caller's own error),
    else the group itself."""
    leaves: list[BaseException] = [group]
    while len(leaves) == 1 and isinstance(leaves[0], BaseExceptionGroup):
        leaves = list(leaves[0].exceptions)
    return leaves[0] if len(leaves) == 1 else group


async def send_quietly(frames: FrameStream[InferenceFrame], frame: InferenceFrame) -> None:
    """Best-effort write of a last frame (an error, a cancel): the peer may already be gone."""
    with trio.move_on_after(2):
        try:
            await frames.send(frame)
        except Exception:
            pass


def remote_key(stream: Any) -> bytes | None:
    """The raw public key of the peer at the other end of a libp2p stream (authenticated by Noise/TLS)."""
    try:
        key = stream.muxed_conn.peer_id.extract_public_key()
    except AttributeError:
        return None  # not a libp2p stream (tests with in-memory streams)
    return key.to_bytes() if key is not None else None
