"""Build a backend from configuration (``kind`` plus keyword options), importing only what it needs."""

from __future__ import annotations

from typing import Any

from cocoon_node.inference.backend import Backend

BACKEND_KINDS: tuple[str, ...] = ("torch", "exllamav2", "openai-upstream", "synthetic")


def make_backend(kind: str, **options: Any) -> Backend:
    """A not-yet-loaded backend of ``kind``; options are the backend class's keyword arguments.

    Raises ``ValueError`` for an unknown kind or options the backend does not take, so a bad config file
    fails with a message naming the problem rather than a ``TypeError`` from deep inside.
    """
    backend_cls: Any
    if kind == "torch":
        from cocoon_node.inference.torch_cpu import TorchBackend as backend_cls
    elif kind == "exllamav2":
        from cocoon_node.inference.exllama import ExLlamaV2Backend as backend_cls
    elif kind == "openai-upstream":
        from cocoon_node.inference.upstream import OpenAIUpstreamBackend as backend_cls
    elif kind == "synthetic":
        from cocoon_node.inference.synthetic import SyntheticBackend as backend_cls
    else:
        raise ValueError(f"unknown backend kind {kind!r} (expected one of: {', '.join(BACKEND_KINDS)})")
    try:
        backend: Backend = backend_cls(**options)
    except TypeError as exc:
        raise ValueError(f"bad options for backend {kind!r}: {exc}") from exc
    return backend


def _conformance() -> None:
    """Never called: makes mypy check that every backend class satisfies the Backend protocol."""
    from cocoon_node.inference.exllama import ExLlamaV2Backend
    from cocoon_node.inference.synthetic import SyntheticBackend
    from cocoon_node.inference.torch_cpu import TorchBackend
    from cocoon_node.inference.upstream import OpenAIUpstreamBackend

    backends: list[Backend] = [
        SyntheticBackend(),
        TorchBackend(),
        OpenAIUpstreamBackend("http://127.0.0.1", "m"),
        ExLlamaV2Backend("."),
    ]
    del backends
