"""Why no worker gets a request: the requester's refusals before (or instead of) trying one.

:class:`NoWorkerAvailable` (503: workers exist but none is usable now, :func:`why_unusable` says why) and
the ones that are the client's request (4xx, never counted against a worker): :class:`ModelNotFound`,
:class:`CapabilityUnavailable` and :class:`ContextTooLong` (:func:`context_refusal`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cocoon_node.inference.features import unsupported
from cocoon_node.mesh.announce import Announcement, Hardware


class NoWorkerAvailable(Exception):
    """Workers offer the model but none is usable now (the message says why: :func:`why_unusable`)."""

    def __init__(self, message: str, *, code: str = "no_worker") -> None:
        super().__init__(message)
        self.code = code


class ModelNotFound(NoWorkerAvailable):
    """No worker known to this requester offers the model at all (OpenAI's 404 ``model_not_found``)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"the model {model!r} does not exist: no worker offers it", code="model_not_found")
        self.model = model


#: Failures that are the client's request: never retried elsewhere, never counted against the worker.
CLIENT_FAULTS = ("invalid_request", "context_length")


class CapabilityUnavailable(NoWorkerAvailable):
    """Workers serve the model, but none announced an optional feature the request uses: the client's
    request, refused (400 naming ``field``) before any worker sees it."""

    def __init__(self, model: str, capability: str, field: str) -> None:
        super().__init__(f"no worker serving {model!r} supports {capability} (requested by {field})",
                         code="unsupported_parameter")
        self.capability = capability
        self.field = field


def lacking_capability(workers: Sequence[Announcement], model: str,
                       needs: Mapping[str, str]) -> tuple[str, str] | None:
    """``(capability, field)`` when workers serve ``model`` but none announced all of ``needs``, else None."""
    offered = [w for w in workers if w.model == model]
    if not needs or not offered or any(unsupported(needs, frozenset(w.capabilities)) is None for w in offered):
        return None
    union = frozenset(c for w in offered for c in w.capabilities)
    return unsupported(needs, union) or next(iter(needs.items()))


#: Tokenizer hash -> our exact counter for it (``count_prompt(chat)``), or None when we only bound.
TokenCounterFor = Callable[[bytes], Any]


class ContextTooLong(NoWorkerAvailable):
    """Every worker for the model announced a context the prompt (counted with its own tokenizer) does not fit
    in: the client's request, 400 ``context_length_exceeded`` before any worker sees it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="context_length_exceeded")


def context_refusal(workers: Sequence[Announcement], chat: Any, counter_for: TokenCounterFor | None,
                    cache: dict[bytes, int] | None = None) -> str | None:
    """Why the prompt fits none of ``workers``, or None when one may take it (or we cannot tell: no context
    announced, or no exact count). Same rule as the worker's: the prompt must leave a token to generate."""
    if counter_for is None or not workers:
        return None
    largest: tuple[int, int] | None = None
    for w in workers:
        context = w.hardware.context_length if isinstance(w.hardware, Hardware) else 0
        counter = counter_for(w.tokenizer) if context > 0 and w.tokenizer else None
        if counter is None:
            return None
        if cache is None or w.tokenizer not in cache:
            counted = counter.count_prompt(chat)
            if cache is not None:
                cache[w.tokenizer] = counted
        else:
            counted = cache[w.tokenizer]
        if counted < context:
            return None
        if largest is None or context > largest[1]:
            largest = (counted, context)
    assert largest is not None
    return f"the prompt is {largest[0]} tokens; this model's maximum context length is {largest[1]} tokens"


def why_unusable(offered: Sequence[Announcement], model: str, *, max_price_prompt: int, max_price_completion: int,
                 allow_synthetic: bool, dropped: Mapping[bytes, str],
                 refused: Callable[[Announcement], bool]) -> str:
    """The 503's message: workers offer ``model`` but none may take the request, and why (each reason once)."""
    reasons: dict[str, int] = {}
    for w in offered:
        if w.peer_id in dropped:
            why = "dropped for claiming more tokens than it served"
        elif w.synthetic and not allow_synthetic:
            why = "synthetic (not accepted here)"
        elif w.price_prompt > max_price_prompt or w.price_completion > max_price_completion:
            why = (f"price above this requester's limit ({max_price_prompt}/{max_price_completion} nTON per "
                   "prompt/completion token)")
        elif refused(w):
            why = "attestation refused (see GET /v1/models for each verdict)"
        else:
            why = "attestation not verified yet or no longer holding"
        reasons[why] = reasons.get(why, 0) + 1
    listed = "; ".join(f"{n} {why}" for why, n in reasons.items())
    return f"no usable worker serves {model!r}: {len(offered)} offer it: {listed}"
