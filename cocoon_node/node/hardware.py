"""What serves a worker's model, for its announcements: detected where the backend can tell, else declared.

Detected: CUDA devices (name, count, memory per device) when the backend runs on them (exllamav2, or torch
with CUDA), ``cpu`` for the torch CPU backend; the context window of the loaded model (a backend's
``context_length``), or the upstream server's model info (``GET /models``: vLLM's ``max_model_len`` and the
like). Declared (``worker.accelerator*``, ``worker.context_length``): what the operator states; announced as
"declared", and nothing checks it. Neither is bound by the attestation report.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import httpx
import msgspec

from cocoon_node.config import WorkerSection
from cocoon_node.inference.backend import Backend
from cocoon_node.mesh.announce import Announcement, Hardware
from cocoon_node.wire.messages.announce import Source

log = logging.getLogger(__name__)

UPSTREAM_CONTEXT_KEYS = ("max_model_len", "context_length", "max_context_length", "context_window")


def cuda_devices() -> tuple[str, int, int] | None:
    """(name, count, MiB per device) of the visible CUDA devices, or None (no torch, no CUDA)."""
    try:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return None
        props = torch.cuda.get_device_properties(0)
        return str(props.name), int(torch.cuda.device_count()), int(props.total_memory) // (1 << 20)
    except Exception as exc:  # a broken driver is "not detected", never a crash
        log.debug("CUDA detection failed: %r", exc)
        return None


def detect_accelerator(backend: Backend) -> tuple[str, int, int] | None:
    if backend.kind == "exllamav2":
        return cuda_devices()
    if backend.kind == "torch":
        return "cpu", 0, 0  # cocoon's torch backend runs on the CPU
    return None  # synthetic, openai-upstream: the node cannot see the hardware


async def upstream_context_length(base_url: str, model: str, timeout: float = 5.0,
                                  transport: httpx.AsyncBaseTransport | None = None) -> int:
    """The context length the upstream OpenAI-compatible server reports for ``model`` (0: it does not say)."""
    try:
        async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
            reply = await client.get(base_url.rstrip("/") + "/models")
            reply.raise_for_status()
            entries: list[dict[str, Any]] = reply.json().get("data", [])
    except Exception as exc:
        log.info("upstream model info unavailable: %r", exc)
        return 0
    for entry in entries:
        if isinstance(entry, dict) and entry.get("id") == model:
            for key in UPSTREAM_CONTEXT_KEYS:
                value = entry.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 16_777_216:
                    return value
    return 0


async def describe_hardware(backend: Backend, worker: WorkerSection) -> Hardware:
    """The facts to announce, each marked detected, declared or unknown."""
    accelerator = detect_accelerator(backend)
    if accelerator is not None:
        name, count, memory = accelerator
        hw_source = "detected"
        if worker.accelerator and worker.accelerator != name:
            log.warning("declared accelerator %r ignored: detected %r", worker.accelerator, name)
    elif worker.accelerator:
        name, count, memory, hw_source = (worker.accelerator, worker.accelerator_count,
                                          worker.accelerator_memory_mib, "declared")
    else:
        name, count, memory, hw_source = "", 0, 0, "unknown"
    context = int(getattr(backend, "context_length", 0) or 0)
    if not context and backend.kind == "openai-upstream" and worker.upstream_url:
        context = await upstream_context_length(worker.upstream_url, worker.model)
    if context:
        ctx_source = "detected"
    elif worker.context_length:
        context, ctx_source = worker.context_length, "declared"
    else:
        ctx_source = "unknown"
    return Hardware(accelerator=name[:64], accelerator_count=min(count, 64), accelerator_memory_mib=memory,
                    hardware_source=cast(Source, hw_source), context_length=context,
                    context_source=cast(Source, ctx_source))


def hardware_dict(announcement: Announcement) -> dict[str, Any] | None:
    """The hardware an announcement carries, as a status/JSON map; ``None`` when it carries none (v1)."""
    return announcement.hardware.to_dict() if isinstance(announcement.hardware, Hardware) else None


def hardware_matches(hardware: Hardware | msgspec.UnsetType | None, filters: dict[str, str]) -> bool:
    """Whether a worker's announced hardware passes ``/v1/models`` filters (unknown facts never pass one)."""
    if not isinstance(hardware, Hardware):
        hardware = None  # not announced (UNSET on an announcement)
    want_context = filters.get("min_context_length")
    if want_context:
        if hardware is None or hardware.context_length < int(want_context):
            return False
    want_accelerator = filters.get("accelerator")
    if want_accelerator:
        if hardware is None or want_accelerator.lower() not in hardware.accelerator.lower():
            return False
    return True


def hardware_summary(workers: list[Announcement]) -> dict[str, Any]:
    """Per model: the context lengths served (min, max; detected or declared) and the accelerators on offer."""
    known = [w.hardware for w in workers if isinstance(w.hardware, Hardware)]
    contexts = [h.context_length for h in known if h.context_length]
    return {
        "context_length": [min(contexts), max(contexts)] if contexts else None,
        "accelerators": sorted({f"{h.accelerator} x{h.accelerator_count}" if h.accelerator_count else h.accelerator
                                for h in known if h.accelerator}),
        "hardware_declared_only": bool(known) and all(h.hardware_source != "detected" for h in known),
    }
