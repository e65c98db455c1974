"""Issue 13, more of the API with the official openai client: ``POST /v1/completions`` (a prompt string or a
list, streamed and not, OpenAI's text_completion shape, the cost in nanotons in ``usage``), ``GET
/v1/models/{id}`` (404 ``model_not_found`` for an unknown id) and ``usage.cost_nanotons`` on chat answers."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import trio

from cocoon_node.inference import SyntheticBackend

from .api_harness import api_over

MODEL = "synthetic-echo"
ENTRY = {"id": MODEL, "object": "model", "created": 0, "owned_by": "cocoon-mesh",
         "cocoon": {"workers": 1, "attestation": [{"load": 0, "max_concurrent": 2, "in_flight": 0,
                                                    "hardware": {"context_length": 8192}}]}}


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def run(fn: Any) -> Any:
    return trio.to_thread.run_sync(fn)


async def test_a_text_completion_for_one_prompt_and_for_a_list() -> None:
    backend = SyntheticBackend(tokens_per_second=10_000)
    async with api_over(backend, MODEL) as api:
        with trio.fail_after(60):
            one = await run(lambda: client(api.url).completions.create(model=MODEL, prompt="alpha beta gamma"))
            many = await run(lambda: client(api.url).completions.create(
                model=MODEL, prompt=["one two", "three four five"], max_tokens=2))
    assert one.object == "text_completion" and one.id.startswith("cmpl-") and one.model == MODEL
    assert one.choices[0].text == "alpha beta gamma" and one.choices[0].index == 0
    assert one.choices[0].finish_reason == "stop"
    assert one.usage.prompt_tokens == 3 and one.usage.completion_tokens == 3
    cost = one.usage.model_extra["cost_nanotons"]  # the harness's worker: 1 nTON per prompt and completion token
    assert cost == {"prompt": 3, "completion": 3, "total": 6}
    assert [c.text for c in many.choices] == ["one two", "three four"] and [c.index for c in many.choices] == [0, 1]
    assert [c.finish_reason for c in many.choices] == ["stop", "length"]
    assert many.usage.prompt_tokens == 5 and many.usage.completion_tokens == 4
    assert many.usage.model_extra["cost_nanotons"]["total"] == 9
    assert len(api.server.request_log) == 3  # each prompt its own request, metered on its own


async def test_a_streamed_text_completion() -> None:
    backend = SyntheticBackend(tokens_per_second=10_000)
    async with api_over(backend, MODEL) as api:
        with trio.fail_after(60):
            chunks = await run(lambda: list(client(api.url).completions.create(
                model=MODEL, prompt="red green blue", stream=True, stream_options={"include_usage": True})))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "red green blue"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].usage.model_extra["cost_nanotons"] == {"prompt": 3, "completion": 3, "total": 6}


@pytest.mark.parametrize(("kw", "param"), [
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": ["a", "b"], "stream": True}, "prompt"),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
])
async def test_bad_completions_are_400_naming_the_field(kw: dict[str, Any], param: str) -> None:
    backend = SyntheticBackend(tokens_per_second=10_000)
    async with api_over(backend, MODEL) as api:
        with trio.fail_after(60), pytest.raises(openai.BadRequestError) as info:
            await run(lambda: client(api.url).completions.create(model=MODEL, **kw))
    assert info.value.body["param"] == param  # type: ignore[index]
    assert len(api.server.request_log) == 0


async def test_an_unknown_model_is_a_404_on_completions_too() -> None:
    backend = SyntheticBackend(tokens_per_second=10_000)
    async with api_over(backend, MODEL) as api:
        with trio.fail_after(60), pytest.raises(openai.NotFoundError) as info:
            await run(lambda: client(api.url).completions.create(model="nope", prompt="hi"))
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


async def test_get_one_model_and_404_for_an_unknown_one() -> None:
    backend = SyntheticBackend(tokens_per_second=10_000)
    async with api_over(backend, MODEL, models=lambda *_: [ENTRY]) as api:
        with trio.fail_after(60):
            got = await run(lambda: client(api.url).models.retrieve(MODEL))
            with pytest.raises(openai.NotFoundError) as info:
                await run(lambda: client(api.url).models.retrieve("org/no-such-model"))
    assert got.id == MODEL and got.object == "model" and got.owned_by == "cocoon-mesh"
    worker = got.model_extra["cocoon"]["attestation"][0]
    assert worker["max_concurrent"] == 2 and worker["hardware"]["context_length"] == 8192
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found" and "org/no-such-model" in body["message"]


async def test_chat_usage_carries_the_cost_in_nanotons() -> None:
    backend = SyntheticBackend(tokens_per_second=10_000)
    async with api_over(backend, MODEL) as api:
        with trio.fail_after(60):
            out = await run(lambda: client(api.url).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "a b c d"}]))
    assert out.usage.prompt_tokens == 4 and out.usage.completion_tokens == 4
    assert out.usage.model_extra["cost_nanotons"] == {"prompt": 4, "completion": 4, "total": 8}
