"""The exllamav2 backend needs CUDA and the optional ``gpu`` extra; without them it must say why."""

from __future__ import annotations

import pytest
import trio

from cocoon_node.inference import BackendError, ExLlamaV2Backend, exllamav2_available

AVAILABLE, REASON = exllamav2_available()


def test_availability_reason_is_actionable() -> None:
    if AVAILABLE:
        assert REASON == "ok"
    else:
        assert REASON.startswith(("exllamav2 not installed", "exllamav2 backend unavailable"))


async def test_load_refuses_with_the_reason_when_unavailable() -> None:
    if AVAILABLE:
        pytest.skip("exllamav2 is available here")
    with trio.fail_after(10), pytest.raises(BackendError, match="exllamav2"):
        await ExLlamaV2Backend("/nonexistent").load()


@pytest.mark.gpu
@pytest.mark.skipif(not AVAILABLE, reason=REASON)
async def test_generate_on_gpu() -> None:  # pragma: no cover - needs a GPU and an EXL2 model
    import os

    from cocoon_node.inference import parse_chat_request

    model_dir = os.environ.get("COCOON_EXL2_MODEL_DIR")
    if not model_dir:
        pytest.skip("set COCOON_EXL2_MODEL_DIR to an EXL2 model directory")
    backend = ExLlamaV2Backend(model_dir, max_batch=4)
    with trio.fail_after(600):
        await backend.load()
    req = parse_chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "Say hi."}], "temperature": 0, "max_tokens": 8}
    )
    texts: list[str] = []

    async def one() -> None:
        with trio.fail_after(120):
            async with backend.generate(req) as stream:
                deltas = [d async for d in stream]
        assert deltas[-1].finish_reason in ("stop", "length")
        texts.append("".join(d.text for d in deltas))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert len(set(texts)) == 1 and texts[0]
    await backend.aclose()
