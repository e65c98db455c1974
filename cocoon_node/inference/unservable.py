"""Why no worker gets a request: the requester's refusals before (or instead of) trying one.

:class:`NoWorkerAvailable` (503: workers exist but none is usable now) and the two that are the client's
request (4xx, never counted against a worker): :class:`ModelNotFound` and :class:`CapabilityUnavailable`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cocoon_node.inference.features import unsupported
from cocoon_node.mesh.announce import Announcement


class NoWorkerAvailable(Exception):
    """No attested worker serves the model within the price limit with free capacity."""

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
