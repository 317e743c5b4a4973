"""Reading a Qwen-1 ReAct reply as an OpenAI assistant message, streamed or whole.

The rules follow Qwen's ``openai_api.py`` ``parse_response`` (L310-352), with the reply text cut at the first
``Observation:`` (its stop word, L157-163) and stripped as ``model.chat`` strips replies:

- ``\\nAction: NAME\\nAction Input: ARGS`` with a non-empty NAME is a tool call; ARGS (stripped) is passed as
  it is, valid JSON or not, as the original does; the text before ``\\nAction:``, from after a leading
  ``Thought:``, is the message content (None when empty).
- Otherwise, a reply that starts with ``Thought:`` gives the text after ``\\nFinal Answer:`` as its content
  (only the final answer, as the original returns), or the whole reply when it has no final answer; any
  other reply is content as it is.

Two deliberate differences, so a streamed reply can be sent while it is generated and still always end
as the whole reply would: the first of ``\\nAction:`` / ``\\nFinal Answer:`` decides (the original looks for
an action anywhere, then for the *last* final answer), and ``Final Answer:`` scaffolding is only removed
from replies that start with ``Thought:`` (the form the models were aligned on); an unscaffolded reply is
streamed as it comes. Only text that may still turn into a marker is held back.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

ACTION, ACTION_INPUT, FINAL, OBSERVATION, THOUGHT = (
    "\nAction:",
    "\nAction Input:",
    "\nFinal Answer:",
    "Observation:",
    "Thought:",
)


@dataclass
class _Reading:
    """What can be said for sure about a reply so far: final content/arguments only ever grow."""

    content: str = ""
    name: str | None = None  # set once the reply is known to be a tool call
    arguments: str = ""


def _held_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is the start of a marker (it may become one)."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:n]):
                best = n
                break
    return best


def _settled(text: str, final: bool) -> str:
    """``text`` without the end that may still change: trailing whitespace unless the reply is over."""
    return text.strip() if final else text.lstrip().rstrip()


def read_reply(text: str, final: bool, calls_allowed: bool = True) -> _Reading:
    """The settled reading of ``text``; with ``final`` False, only what no continuation can change."""
    cut = text.find(OBSERVATION)
    if cut >= 0:
        text, final = text[:cut], True
    elif not final:
        text = text[: len(text) - _held_suffix(text, (OBSERVATION,))]
    lead = text.lstrip()
    if not final and len(lead) < len(THOUGHT) and THOUGHT.startswith(lead):
        return _Reading()  # can't tell yet whether the reply is scaffolded
    scaffold = lead.startswith(THOUGHT)
    i = text.find(ACTION) if calls_allowed else -1
    f = text.find(FINAL)
    if i >= 0 and (f < 0 or i < f):
        j = text.find(ACTION_INPUT, i + len(ACTION))
        name = text[i + len(ACTION) : j].strip() if j >= 0 else ""
        if name:
            thought = text[:i].lstrip()
            if scaffold:
                thought = thought[len(THOUGHT) :]
            return _Reading(thought.strip(), name, _settled(text[j + len(ACTION_INPUT) :], final))
        if not final:  # an action without its input (yet): only an unscaffolded prefix is certain
            return _Reading("" if scaffold else _settled(text[:i], False))
        i = -1
    if scaffold and f >= 0 and (i < 0 or f < i):
        return _Reading(_settled(text[f + len(FINAL) :], final))
    if final:
        return _Reading(text.strip())
    if scaffold:
        return _Reading()  # a marker may still come: hold the thought
    markers = (FINAL, ACTION) if calls_allowed else (FINAL,)
    return _Reading(_settled(text[: len(text) - _held_suffix(text, markers)], False))


class ToolReplyParser:
    """Feed the reply text as it streams; get OpenAI deltas out (see module docstring for the rules)."""

    def __init__(self, plan: Any, reply_id: str | None = None):
        """``plan``: the request's :class:`~qwen_core.tools.ToolPlan`; ``reply_id`` makes tool-call ids
        deterministic (``call_`` + 24 hex digits of a hash of it)."""
        self.legacy = bool(plan.legacy)
        self.calls_allowed = bool(plan.tool_names)
        # A continuation ends in "Thought:", and a forced prefix was generated for the model: both are
        # part of the reply as the parser reads it, though never sent by the engine.
        cont = plan.continuation or ""
        self._text = (THOUGHT if cont.endswith(THOUGHT) else "") + plan.forced_prefix
        self._seed = reply_id or uuid.uuid4().hex
        self._sent = _Reading()
        self._finished: str | None = None
        self._final = _Reading()

    @property
    def call_id(self) -> str:
        """The id of this reply's tool call (index 0; Qwen-1 makes one call per step)."""
        return "call_" + hashlib.sha256(f"{self._seed}:0".encode()).hexdigest()[:24]

    def _deltas(self, now: _Reading) -> list[dict]:
        out: list[dict] = []
        if len(now.content) > len(self._sent.content):
            out.append({"content": now.content[len(self._sent.content) :]})
        if now.name is not None and self._sent.name is None:
            if self.legacy:
                out.append({"function_call": {"name": now.name, "arguments": ""}})
            else:
                call = {
                    "index": 0,
                    "id": self.call_id,
                    "type": "function",
                    "function": {"name": now.name, "arguments": ""},
                }
                out.append({"tool_calls": [call]})
        if now.name is not None and len(now.arguments) > len(self._sent.arguments):
            piece = now.arguments[len(self._sent.arguments) :]
            if self.legacy:
                out.append({"function_call": {"arguments": piece}})
            else:
                out.append({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        self._sent = now
        return out

    def feed(self, text: str) -> list[dict]:
        """Add the next piece of the reply; returns the deltas it settles (maybe none)."""
        if self._finished is not None:
            raise RuntimeError("feed() after finish()")
        self._text += text
        return self._deltas(read_reply(self._text, False, self.calls_allowed))

    def finish(self) -> tuple[list[dict], str]:
        """The remaining deltas and the finish reason: "tool_calls" ("function_call" legacy) or "stop"."""
        if self._finished is None:
            self._final = read_reply(self._text, True, self.calls_allowed)
            deltas = self._deltas(self._final)
            self._finished = "stop" if self._final.name is None else ("function_call" if self.legacy else "tool_calls")
            return deltas, self._finished
        return [], self._finished

    @property
    def text(self) -> str:
        """The reply as the parser read it (virtual ``Thought:`` and forced prefix included)."""
        return self._text

    def message(self) -> dict:
        """The whole assistant message (call after :meth:`finish`)."""
        if self._finished is None:
            raise RuntimeError("message() before finish()")
        got = self._final
        if got.name is None:
            return {"role": "assistant", "content": got.content}
        msg: dict[str, Any] = {"role": "assistant", "content": got.content or None}
        if self.legacy:
            msg["function_call"] = {"name": got.name, "arguments": got.arguments}
        else:
            msg["tool_calls"] = [
                {"id": self.call_id, "type": "function", "function": {"name": got.name, "arguments": got.arguments}}
            ]
        return msg
