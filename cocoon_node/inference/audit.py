"""The requester's own count of what it pays for: every token count a worker claims is checked here first.

A worker says how many prompt tokens it counted (accept frame) and how many completion tokens each delta
stands for. The requester never charges more than it can justify itself:

- prompt tokens: with the worker's own tokenizer (announced by hash, see ``inference.tokencount``) exactly
  the count of the prompt through the model's chat template; without it, at most one token per UTF-8 byte
  of the messages plus a fixed allowance for a chat template (:data:`TEMPLATE_TOKENS`,
  :data:`MESSAGE_TOKENS` per message);
- completion tokens: never more than ``max_tokens``; with the tokenizer, the count of the streamed text
  plus a small allowance (:func:`completion_allowance`: tokens whose text is held back, a final special
  token, a stop sequence, and 1/32 for sampled tokens that re-encode into fewer); without it, one token per
  streamed UTF-8 byte plus the same held-back allowance (every byte-level or byte-fallback token carries at
  least one byte).
- tool calls (issue 13): their names and argument text count like streamed text, plus
  :data:`TOOL_CALL_TOKENS` per call for the markup around it that the API never shows.

A claim over the bound is a worker fault (:class:`Overcount`): the call fails, nothing beyond the bound is
charged, and the requester drops the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cocoon_node.inference.chat import ChatRequest
from cocoon_node.inference.extras import ToolCallDelta
from cocoon_node.inference.tokencount import TextCount, TokenCounter

#: Prompt tokens a chat template may add around the messages when we cannot render it ourselves (SmolLM2's
#: adds 31 to a one-message prompt: its default system prompt and the role markers).
TEMPLATE_TOKENS = 64
#: ... and per message (role name and markers).
MESSAGE_TOKENS = 8
#: Completion tokens whose text may not have reached us yet: a multi-byte character still incomplete (at
#: most 3 byte tokens) and the end-of-sequence token, which has no text.
HELD_BACK_TOKENS = 4
#: Tokens a model may spend around one tool call beyond its name and arguments (a ``<tool_call>`` marker,
#: braces, the ``"name"``/``"arguments"`` keys of its own JSON format).
TOOL_CALL_TOKENS = 16


def _tool_bytes(calls: Sequence[dict[str, Any]]) -> int:
    return sum(len(c["function"]["name"]) + len(c["function"]["arguments"].encode()) + len(c["id"]) for c in calls)


class Overcount(Exception):
    """The worker claimed more tokens than the requester can account for."""


def completion_allowance(counted: int) -> int:
    """Tokens beyond our count of the streamed text that an honest worker may still claim: held-back and
    special tokens, and sampled token sequences that re-encode into fewer tokens (1 in 32)."""
    return HELD_BACK_TOKENS + counted // 32


class TokenAudit:
    """Checks one request's claimed counts; ``completion_tokens`` is what may be charged."""

    def __init__(self, chat: ChatRequest, counter: TokenCounter | None = None) -> None:
        self.chat = chat
        self.counter = counter
        self.max_completion = chat.max_tokens
        self._stop_bytes = max((len(s.encode()) for s in chat.stop), default=0)
        self._count: TextCount | None = counter.text_count() if counter is not None else None
        self._bytes = 0
        self._tool_calls: set[int] = set()
        self.prompt_tokens = 0
        self.completion_tokens = 0

    @property
    def exact(self) -> bool:
        """We count with the worker's own tokenizer (else we only bound)."""
        return self.counter is not None

    def prompt_bound(self) -> int:
        if self.counter is not None:
            return self.counter.count_prompt(self.chat)
        # Tools, response schemas and earlier tool calls are rendered into the prompt too (issue 13).
        return TEMPLATE_TOKENS + sum(len(m.content.encode()) + len(m.role) + MESSAGE_TOKENS + _tool_bytes(m.tool_calls)
                                     for m in self.chat.messages) + self.chat.features.wire_bytes()

    def check_prompt(self, claimed: int) -> int:
        """Accept the worker's prompt count if it is within our bound; raise :class:`Overcount` otherwise."""
        bound = self.prompt_bound()
        if claimed > bound:
            raise Overcount(f"worker claims {claimed} prompt tokens; we count at most {bound}"
                            + ("" if self.exact else " (no tokenizer for this worker: bytes + template)"))
        self.prompt_tokens = claimed
        return claimed

    def completion_bound(self) -> int:
        """The most completion tokens the text streamed so far can stand for."""
        if self._count is not None:
            bound = self._count.tokens + completion_allowance(self._count.tokens)
        else:
            bound = self._bytes + HELD_BACK_TOKENS
        bound += self._stop_bytes  # the tokens that formed a stop sequence, whose text is never sent
        bound += TOOL_CALL_TOKENS * len(self._tool_calls)
        return bound if self.max_completion is None else min(bound, self.max_completion)

    def add_delta(self, text: str, claimed: int, *, tool_calls: Sequence[ToolCallDelta] = ()) -> int:
        """Count one delta; returns the running chargeable total. Over the bound, the total is clamped to
        the bound (the text we did receive is paid for) and :class:`Overcount` is raised."""
        for piece in (text, *((c.name or "") + c.arguments for c in tool_calls)):
            if piece:
                self._bytes += len(piece.encode())
                if self._count is not None:
                    self._count.add(piece)
        self._tool_calls.update(c.index for c in tool_calls if c.name)  # a call is opened by its named piece
        total = self.completion_tokens + claimed
        bound = self.completion_bound()
        if total > bound:
            self.completion_tokens = max(self.completion_tokens, bound)
            raise Overcount(f"worker claims {total} completion tokens for {self._bytes} bytes of text; we count "
                            f"at most {bound}" + (f" (max_tokens {self.max_completion})"
                                                  if self.max_completion is not None else ""))
        self.completion_tokens = total
        return total
