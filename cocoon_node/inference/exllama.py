"""GPU inference on EXL2-quantized models with exllamav2's dynamic (continuous-batching) generator.

Batching: all concurrent requests are jobs of one ``ExLlamaV2DynamicGenerator``; each ``iterate()`` call
advances every active job by one step in a single batched forward pass, and jobs join and leave between
steps. There is no driver task: whichever reader needs data and finds no buffered delta takes the step lock,
runs one ``iterate()`` in a worker thread and files the results into every job's inbox (the leader pattern),
so the generator only ever runs while someone is reading and only one thread touches it at a time.

Cancellation: a reader that leaves queues its job for ``generator.cancel`` which the next step performs
before computing anything, so no further token is computed for it. A step in progress is shielded from
cancellation (it lasts one forward pass) so results for the other jobs are never lost.

Backpressure is per batch, not per request: a slow reader's inbox grows while faster readers drive the
batch, bounded by that request's ``max_tokens``.

exllamav2 (and CUDA) are imported lazily; :func:`exllamav2_available` says why the backend cannot run.
This module cannot be exercised without a CUDA GPU.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import trio

from cocoon_node.inference.backend import (
    BackendError,
    ContextLengthError,
    FinishReason,
    SlotCounter,
    TokenDelta,
)
from cocoon_node.inference.chat import ChatRequest
from cocoon_node.inference.features import SEED
from cocoon_node.inference.torch_cpu import chat_template_messages

_WEIGHT_SUFFIXES = (".safetensors",)
_CONFIG_FILES = ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json")
_PAGE = 256  # the dynamic generator's page size; cache sizes must be multiples of it


def exllamav2_available() -> tuple[bool, str]:
    """``(True, "ok")`` when the backend can run here, else ``(False, reason)``; imports nothing heavy."""
    if importlib.util.find_spec("exllamav2") is None:
        return False, "exllamav2 not installed (pip install '.[gpu]')"
    try:
        import torch
    except ImportError:
        return False, "exllamav2 backend unavailable: torch not installed"
    if not torch.cuda.is_available():
        return False, "exllamav2 backend unavailable: CUDA not available"
    return True, "ok"


@dataclass
class _Job:
    """One request's job and the deltas filed for it by whichever reader ran the step."""

    key: int
    job: Any
    prompt_tokens: int
    inbox: deque[TokenDelta] = field(default_factory=deque)
    finished: bool = False  # the generator has produced the final delta (or failed)
    error: BaseException | None = None


class _JobStream:
    """Async iterator over one job's deltas; drives the shared generator when its inbox is empty."""

    def __init__(self, backend: ExLlamaV2Backend, job: _Job) -> None:
        self._backend = backend
        self._job = job

    def __aiter__(self) -> _JobStream:
        return self

    async def __anext__(self) -> TokenDelta:
        job = self._job
        while True:
            if job.inbox:
                return job.inbox.popleft()
            if job.finished:
                if job.error is not None:
                    raise BackendError(f"exllamav2 generation failed: {job.error!r}") from job.error
                raise StopAsyncIteration
            async with self._backend._step_lock:
                if not job.inbox and not job.finished:
                    await self._backend._step()


class ExLlamaV2Backend:
    """An EXL2 model directory served by exllamav2's dynamic generator; see the module docstring."""

    kind = "exllamav2"
    synthetic = False
    capabilities = frozenset({SEED})  # the sampler takes the seed

    def __init__(
        self,
        model_dir: Path | str,
        *,
        model_name: str | None = None,
        max_batch: int = 8,
        max_seq_len: int | None = None,
        cache_tokens: int | None = None,
        default_max_tokens: int = 512,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model_name = model_name or self.model_dir.name
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len
        self.cache_tokens = cache_tokens
        self.default_max_tokens = default_max_tokens
        self.tokens_generated = 0
        self._slots = SlotCounter(max_batch)
        self._limiter = trio.CapacityLimiter(1)
        self._step_lock = trio.Lock()
        self._keys = count()
        self._jobs: dict[int, _Job] = {}
        self._to_enqueue: list[Any] = []
        self._to_cancel: list[Any] = []
        self._generator: Any = None
        self._tokenizer: Any = None  # exllamav2 tokenizer: the ids the model sees
        self._template: Any = None  # transformers tokenizer: only for its chat template
        self._tok_lock = threading.Lock()
        self._context_len = 0
        self._stop_ids: list[int] = []

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    @property
    def context_length(self) -> int:
        """Tokens the loaded model's context holds (0 before load): workers announce it (issue 15) and refuse
        longer prompts (issue 13)."""
        return self._context_len

    async def load(self) -> None:
        ok, reason = exllamav2_available()
        if not ok:
            raise BackendError(reason)
        if not self.model_dir.is_dir():
            raise BackendError(f"EXL2 model directory not found: {self.model_dir}")
        if self._generator is None:
            await trio.to_thread.run_sync(self._load_sync, limiter=self._limiter)

    def _load_sync(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Config, ExLlamaV2Tokenizer
        from exllamav2.generator import ExLlamaV2DynamicGenerator
        from transformers import AutoTokenizer

        config = ExLlamaV2Config(str(self.model_dir))
        if self.max_seq_len is not None:
            config.max_seq_len = self.max_seq_len
        self._context_len = int(config.max_seq_len)
        # The cache is shared by all jobs of the batch: by default room for every slot at full context.
        total = self.cache_tokens or self._context_len * self.max_batch
        total = max(_PAGE, (total + _PAGE - 1) // _PAGE * _PAGE)
        model = ExLlamaV2(config)
        cache = ExLlamaV2Cache(model, max_seq_len=total, lazy=True)
        model.load_autosplit(cache, progress=False)
        self._tokenizer = ExLlamaV2Tokenizer(config)
        self._template = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        # Chat models often end a turn with a token (e.g. <|eot_id|>) other than the base EOS.
        eos = {self._tokenizer.eos_token_id, self._template.eos_token_id}
        self._stop_ids = sorted(t for t in eos if isinstance(t, int))
        self._generator = ExLlamaV2DynamicGenerator(
            model=model, cache=cache, tokenizer=self._tokenizer, max_batch_size=self.max_batch
        )

    def model_files(self) -> list[Path]:
        """Weights plus the config and tokenizer files that change what the weights compute."""
        return sorted(
            p
            for p in self.model_dir.iterdir()
            if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _CONFIG_FILES)
        )

    def _prompt_ids(self, req: ChatRequest) -> Any:
        if self._generator is None:
            raise BackendError("ExLlamaV2Backend.load() has not been called")
        with self._tok_lock:
            text = self._template.apply_chat_template(
                chat_template_messages(req), add_generation_prompt=True, tokenize=False
            )
            return self._tokenizer.encode(text, add_bos=False, encode_special_tokens=True)

    def count_tokens(self, req: ChatRequest) -> int:
        return int(self._prompt_ids(req).shape[-1])

    def _make_job(self, req: ChatRequest, key: int) -> tuple[Any, int]:
        from exllamav2.generator import ExLlamaV2DynamicJob, ExLlamaV2Sampler

        ids = self._prompt_ids(req)
        prompt_len = int(ids.shape[-1])
        room = self._context_len - prompt_len
        if room < 1:
            raise ContextLengthError(f"prompt is {prompt_len} tokens; the model context is {self._context_len}")
        wanted = req.max_tokens if req.max_tokens is not None else self.default_max_tokens
        if req.temperature == 0.0:
            settings = ExLlamaV2Sampler.Settings.greedy()
        else:
            # OpenAI semantics: plain temperature + nucleus sampling, no library-default penalties.
            settings = ExLlamaV2Sampler.Settings(
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=0,
                min_p=0.0,
                token_repetition_penalty=1.0,
            )
        job = ExLlamaV2DynamicJob(
            input_ids=ids,
            max_new_tokens=min(wanted, room),
            gen_settings=settings,
            seed=req.seed,
            stop_conditions=[*req.stop, *self._stop_ids],
            identifier=key,
        )
        return job, prompt_len

    async def _step(self) -> None:
        """One generator iteration in a thread, shielded: it is short and other readers need its results."""
        enqueue, cancel = self._to_enqueue, self._to_cancel
        self._to_enqueue, self._to_cancel = [], []
        with trio.CancelScope(shield=True):
            try:
                results = await trio.to_thread.run_sync(self._iterate_sync, enqueue, cancel, limiter=self._limiter)
            except Exception as exc:
                for job in self._jobs.values():
                    job.finished, job.error = True, exc
                return
        for result in results:
            found = self._jobs.get(result.get("identifier", -1))
            if found is None or result.get("stage") != "streaming":
                continue
            job = found
            ids = result.get("token_ids")
            n = int(ids.shape[-1]) if ids is not None else 0
            self.tokens_generated += n
            if result.get("eos"):
                reason: FinishReason = "length" if result.get("eos_reason") == "max_new_tokens" else "stop"
                job.inbox.append(TokenDelta(result.get("text", ""), n, reason, job.prompt_tokens))
                job.finished = True
            elif n or result.get("text"):
                job.inbox.append(TokenDelta(result.get("text", ""), n))

    def _iterate_sync(self, enqueue: list[Any], cancel: list[Any]) -> list[dict[str, Any]]:
        generator = self._generator
        for job in cancel:
            generator.cancel(job)
        for job in enqueue:
            generator.enqueue(job)
        if not generator.num_remaining_jobs():
            return []
        return list(generator.iterate())

    @asynccontextmanager
    async def generate(self, req: ChatRequest) -> AsyncIterator[AsyncIterator[TokenDelta]]:
        async with self._slots.slot():
            key = next(self._keys)
            job, prompt_len = self._make_job(req, key)
            state = _Job(key=key, job=job, prompt_tokens=prompt_len)
            self._jobs[key] = state
            self._to_enqueue.append(job)
            try:
                yield _JobStream(self, state)
            finally:
                del self._jobs[key]
                if not state.finished:
                    if job in self._to_enqueue:
                        self._to_enqueue.remove(job)
                    else:
                        self._to_cancel.append(job)

    async def aclose(self) -> None:
        """Drop the generator; requests must have finished. GPU memory is freed when torch lets go."""
        self._generator = None
        await trio.lowlevel.checkpoint()
